/* lib/base/conf.c — parsing option tables from defaults, environment and command line. */
#include "conf.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* Stores text as the option's value; returns -1 when the text is not a valid value. */
static int set_value(const duet_conf_opt_t *opt, void *conf, const char *text)
{
    char *field = (char *)conf + opt->offset;
    char *end;
    switch (opt->type) {
    case DUET_CONF_STR:
        *(const char **)field = text;
        return 0;
    case DUET_CONF_INT:
    case DUET_CONF_I64: {
        errno = 0;
        long long v = strtoll(text, &end, 0);
        if (errno || end == text || *end)
            return -1;
        if (opt->type == DUET_CONF_INT) {
            if (v < INT_MIN || v > INT_MAX)
                return -1;
            *(int *)field = (int)v;
        } else {
            *(long long *)field = v;
        }
        return 0;
    }
    case DUET_CONF_FLOAT: {
        errno = 0;
        float v = strtof(text, &end);
        if (errno || end == text || *end || isnan(v))
            return -1;
        *(float *)field = v;
        return 0;
    }
    case DUET_CONF_BOOL:
        return parse_bool(text, (int *)field);
    }
    return -1;
}

static const char *type_name(duet_conf_type_t t)
{
    switch (t) {
    case DUET_CONF_STR:   return "TEXT";
    case DUET_CONF_INT:
    case DUET_CONF_I64:   return "N";
    case DUET_CONF_FLOAT: return "X";
    case DUET_CONF_BOOL:  return "";
    }
    return "";
}

duet_status_t duet_conf_parse(const duet_conf_opt_t *opts, int n_opts, void *conf,
                              int argc, char **argv, int first, int *help_p,
                              char *err, size_t err_len)
{
    *help_p = 0;
    for (int i = 0; i < n_opts; i++) {
        const duet_conf_opt_t *o = &opts[i];
        const char *env = o->env ? getenv(o->env) : NULL;
        const char *text = env && *env ? env : o->def;
        if (!text) {
            memset((char *)conf + o->offset, 0,
                   o->type == DUET_CONF_STR ? sizeof(char *)
                   : o->type == DUET_CONF_I64 ? sizeof(long long)
                   : o->type == DUET_CONF_FLOAT ? sizeof(float) : sizeof(int));
            continue;
        }
        if (set_value(o, conf, text) != 0) {
            snprintf(err, err_len, "%s: invalid value '%s' for --%s",
                     text == env ? o->env : "default", text, o->flag);
            return DUET_ERR_INVALID;
        }
    }
    for (int a = first; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help_p = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, err_len, "unexpected argument '%s' (options start with --)", arg);
            return DUET_ERR_INVALID;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const duet_conf_opt_t *o = NULL;
        for (int i = 0; i < n_opts; i++)
            if (strlen(opts[i].flag) == name_len && strncmp(opts[i].flag, name, name_len) == 0)
                o = &opts[i];
        if (!o) {
            snprintf(err, err_len, "unknown option '--%.*s' (see --help)", (int)name_len, name);
            return DUET_ERR_INVALID;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (o->type == DUET_CONF_BOOL) {
            value = "1";
        } else if (a + 1 < argc) {
            value = argv[++a];
        } else {
            snprintf(err, err_len, "option --%s needs a value", o->flag);
            return DUET_ERR_INVALID;
        }
        if (set_value(o, conf, value) != 0) {
            snprintf(err, err_len, "invalid value '%s' for --%s", value, o->flag);
            return DUET_ERR_INVALID;
        }
    }
    return DUET_OK;
}

void duet_conf_usage(FILE *out, const duet_conf_opt_t *opts, int n_opts)
{
    for (int i = 0; i < n_opts; i++) {
        const duet_conf_opt_t *o = &opts[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s %s", o->flag, type_name(o->type));
        fprintf(out, "  %-26s %s", flag, o->help);
        if (o->def)
            fprintf(out, " [default: %s]", o->def);
        if (o->env)
            fprintf(out, " [env: %s]", o->env);
        fputc('\n', out);
    }
}
