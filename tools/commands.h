/* tools/commands.h — the subcommands of the duet command; each takes argv after its own name. */
#ifndef DUET_TOOLS_COMMANDS_H
#define DUET_TOOLS_COMMANDS_H

#include <stddef.h>

#include "backend.h"
#include "conf.h"
#include "model.h"

int duet_cmd_generate(int argc, char **argv);
int duet_cmd_bench(int argc, char **argv);
int duet_cmd_mkmodel(int argc, char **argv);
int duet_cmd_up(int argc, char **argv);
int duet_cmd_apikey(int argc, char **argv);

/* Parses a subcommand's options; prints its usage for --help and one line for an error.
 * Returns -1 to go on, else the exit status to end with (0 after --help, 2 after an error). */
int duet_tool_parse(const char *usage, const duet_conf_opt_t *opts, int n_opts, void *conf,
                    int argc, char **argv);

/* Creates the backend device names ("cpu" or NULL with n_threads, 0: all CPUs; "cuda[:N]") and
 * loads the model at path (NULL: the default model) onto it; prints one clear error line and
 * returns non-zero on failure. */
int duet_tool_open_model(const char *path, const char *device, int n_threads, duet_backend_t **be_p,
                         duet_model_t **model_p);
void duet_tool_close_model(duet_backend_t *be, duet_model_t *model);

#endif
