/* tools/duet.c — the duet command: dispatches to generate, bench and mkmodel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "device.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command_t;

static const command_t commands[] = {
    {"up",       duet_cmd_up,       "start the whole mesh on this machine: redis, scheduler, prefill, decode, gateway"},
    {"generate", duet_cmd_generate, "generate text from a prompt, in process (interactive without --prompt)"},
    {"bench",    duet_cmd_bench,    "measure prompt processing (pp512) and generation (tg128) speed"},
    {"mkmodel",  duet_cmd_mkmodel,  "write a small random-weight GGUF model for tests"},
    {"apikey",   duet_cmd_apikey,   "make an API key and the sha256: entry the gateway is given (--hash: of a key on stdin)"},
};

int duet_tool_open_model(const char *path, const char *device, int n_threads, duet_backend_t **be_p,
                         duet_model_t **model_p)
{
    char def[4096], err[512] = "";
    path = duet_model_resolve_path(path, def, sizeof def);
    duet_backend_t *be;
    char why[256];
    duet_status_t st = duet_device_open(device, n_threads, &be, why, sizeof why);
    if (st != DUET_OK) {
        fprintf(stderr, "duet: %s\n", why);
        return 1;
    }
    duet_model_t *model;
    st = duet_model_load(path, be, &model, err, sizeof err);
    if (st != DUET_OK) {
        fprintf(stderr, "duet: %s: %s\n", path, err[0] ? err : duet_status_str(st));
        be->destroy(be);
        return 1;
    }
    *be_p = be;
    *model_p = model;
    return 0;
}

void duet_tool_close_model(duet_backend_t *be, duet_model_t *model)
{
    char why[256];
    if (duet_backend_status(be, why, sizeof why) != DUET_OK)  /* ops return nothing: ask once */
        fprintf(stderr, "duet: the %s backend failed, so the results above are not valid: %s\n", be->name, why);
    duet_model_free(model);
    be->destroy(be);
}

int duet_tool_parse(const char *usage, const duet_conf_opt_t *opts, int n_opts, void *conf,
                    int argc, char **argv)
{
    char err[512];
    int help;
    if (duet_conf_parse(opts, n_opts, conf, argc, argv, 1, &help, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "duet %s: %s\n", argv[0], err);
        return 2;
    }
    if (help) {
        printf("usage: %s\n", usage);
        duet_conf_usage(stdout, opts, n_opts);
        return 0;
    }
    return -1;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: duet COMMAND [OPTIONS]   (duet COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "duet: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
