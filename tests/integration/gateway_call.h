/* tests/integration/gateway_call.h — one Generate call through a gateway, read to its end, and
 * a child process's stdout: what the mesh and chaos tests do to talk to a running mesh. */
#ifndef DUET_TESTS_GATEWAY_CALL_H
#define DUET_TESTS_GATEWAY_CALL_H

#include <stdint.h>

#include "rpc.h"

typedef struct {
    const char *prompt;
    const char *request_id;   /* NULL: the gateway makes one */
    int max_tokens;
    float temperature;
    float top_p;
    int64_t seed;             /* < 0: none */
    int ignore_eos;
    const char *stop;         /* one stop string, or NULL */
    const char *key;          /* NULL or "": no authorization header */
    int cancel_after;         /* messages read before cancelling; 0: never */
    int timeout_ms;           /* 0: 120 s */
    /* Called after every message with the tokens so far (from the reading thread). */
    void (*on_progress)(void *arg, int n_tokens);
    void *progress_arg;
    /* results */
    duet_status_t status;
    char error[512];
    char *text;               /* malloc'd, never NULL after the call */
    int n_tokens;
    int finish_reason;        /* duet.v1.FinishReason of the last message */
    int64_t first_ns, done_ns;   /* since the call began */
} gateway_call_t;

/* Runs c against the gateway at address (host:port) and fills its results. */
void gateway_generate(duet_rpc_client_t *client, const char *address, gateway_call_t *c);

/* Runs argv (argv[0] a path) and returns its stdout, malloc'd, without one trailing newline;
 * NULL when it failed. */
char *gateway_capture(char *const argv[]);

#endif
