/* lib/base/conf.h — option tables: each program describes its options once (flag, DUET_* env
 * variable, default, help, field offset) and gets parsing and --help from here.
 * Precedence: flag beats environment beats default. */
#ifndef DUET_BASE_CONF_H
#define DUET_BASE_CONF_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

typedef enum {
    DUET_CONF_STR,     /* const char *: points into argv, the environment or the default */
    DUET_CONF_INT,     /* int */
    DUET_CONF_I64,     /* long long */
    DUET_CONF_FLOAT,   /* float */
    DUET_CONF_BOOL,    /* int 0/1; "--flag" alone means 1; also true/false/yes/no/1/0 */
} duet_conf_type_t;

typedef struct {
    const char *flag;       /* "max-tokens" for --max-tokens */
    const char *env;        /* "DUET_MAX_TOKENS", or NULL */
    duet_conf_type_t type;
    size_t offset;          /* offsetof the field in the program's config struct */
    const char *def;        /* default as text, or NULL (strings stay NULL, numbers 0) */
    const char *help;
} duet_conf_opt_t;

/* Fills conf from defaults, the environment and argv[first..argc-1].
 * Sets *help_p when --help or -h was given (conf is then still filled).
 * Errors (unknown flag, missing or malformed value) are written as one line into err. */
duet_status_t duet_conf_parse(const duet_conf_opt_t *opts, int n_opts, void *conf,
                              int argc, char **argv, int first, int *help_p,
                              char *err, size_t err_len);

/* Prints one line per option: flag, value kind, env variable, default, help. */
void duet_conf_usage(FILE *out, const duet_conf_opt_t *opts, int n_opts);

#endif
