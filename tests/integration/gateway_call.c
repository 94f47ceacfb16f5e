/* tests/integration/gateway_call.c — Generate through a gateway for the mesh and chaos tests. */
#include "gateway_call.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "duet/v1/gateway.pb-c.h"

void gateway_generate(duet_rpc_client_t *client, const char *address, gateway_call_t *c)
{
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    sp.temperature = c->temperature;
    sp.top_p = c->top_p;
    if (c->seed >= 0) {
        sp.seed = (uint64_t)c->seed;
        sp.has_seed = 1;
    }
    stop.max_tokens = (uint32_t)c->max_tokens;
    stop.ignore_eos = c->ignore_eos;
    char *stops[1] = {(char *)c->stop};
    if (c->stop) {
        stop.n_stop = 1;
        stop.stop = stops;
    }
    req.prompt = (char *)c->prompt;
    req.request_id = (char *)(c->request_id ? c->request_id : "");
    req.sampling = &sp;
    req.stop = &stop;
    char bearer[256];
    snprintf(bearer, sizeof bearer, "Bearer %s", c->key ? c->key : "");
    duet_rpc_metadata_t md = {"authorization", bearer};
    duet_rpc_opts_t opts = {.timeout_ms = c->timeout_ms ? c->timeout_ms : 120000, .metadata = &md,
                            .n_metadata = c->key && *c->key ? 1 : 0, .error = c->error,
                            .error_size = sizeof c->error};
    size_t cap = 256, len = 0;
    c->text = calloc(1, cap);
    c->n_tokens = 0;
    c->finish_reason = 0;
    c->first_ns = 0;
    int64_t t0 = duet_clock_ns();
    duet_rpc_client_stream_t *s;
    c->status = duet_rpc_client_stream_open(client, address, "/duet.v1.Gateway/Generate", &req.base,
                                            &duet__v1__generate_response__descriptor, &opts, &s);
    if (c->status != DUET_OK) {
        c->done_ns = duet_clock_ns() - t0;
        return;
    }
    int n_msgs = 0;
    for (;;) {
        ProtobufCMessage *msg = NULL;
        c->status = duet_rpc_client_stream_read(s, &msg);
        if (c->status != DUET_OK) {
            snprintf(c->error, sizeof c->error, "%s", duet_rpc_client_stream_error(s));
            break;
        }
        if (!msg)
            break;
        Duet__V1__GenerateResponse *g = (Duet__V1__GenerateResponse *)msg;
        size_t add = g->text ? strlen(g->text) : 0;
        if (len + add + 1 > cap) {
            char *p = realloc(c->text, cap = (len + add + 1) * 2);
            if (!p)
                abort();
            c->text = p;
        }
        memcpy(c->text + len, g->text ? g->text : "", add);
        len += add;
        c->text[len] = '\0';
        if (g->n_token_ids && !c->first_ns)
            c->first_ns = duet_clock_ns() - t0;
        c->n_tokens += (int)g->n_token_ids;
        if (g->finish_reason)
            c->finish_reason = (int)g->finish_reason;
        protobuf_c_message_free_unpacked(msg, NULL);
        if (c->on_progress)
            c->on_progress(c->progress_arg, c->n_tokens);
        if (c->cancel_after && ++n_msgs == c->cancel_after) {
            duet_rpc_client_stream_cancel(s);
            c->status = DUET_ERR_CANCELLED;
            break;
        }
    }
    c->done_ns = duet_clock_ns() - t0;
    duet_rpc_client_stream_close(s);
}

char *gateway_capture(char *const argv[])
{
    int fds[2];
    if (pipe(fds) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    ssize_t n;
    while (out && (n = read(fds[0], out + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 1024) {
            char *p = realloc(out, cap *= 2);
            if (!p)
                free(out);
            out = p;
        }
    }
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    if (!out || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(out);
        return NULL;
    }
    if (len && out[len - 1] == '\n')
        len--;
    out[len] = '\0';
    return out;
}
