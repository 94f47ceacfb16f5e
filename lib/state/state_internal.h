/* lib/state/state_internal.h — what the files of lib/state share and callers must not see: the
 * store itself, argument vectors, the one pipeline function and the Lua scripts. */
#ifndef DUET_STATE_INTERNAL_H
#define DUET_STATE_INTERNAL_H

#include <hiredis.h>

#include "state.h"

/* The Lua scripts, one per compare-and-set or multi-key operation; sources live beside the
 * C function that calls them. */
typedef enum {
    STATE_SCRIPT_REQ_CREATE,
    STATE_SCRIPT_REQ_TRANSITION,
    STATE_SCRIPT_INST_REGISTER,
    STATE_SCRIPT_INST_HEARTBEAT,
    STATE_SCRIPT_INST_LIST,
    STATE_SCRIPT_COUNT
} state_script_t;

extern const char *const state_script_req_create;
extern const char *const state_script_req_transition;
extern const char *const state_script_inst_register;
extern const char *const state_script_inst_heartbeat;
extern const char *const state_script_inst_list;

struct duet_state {
    redisContext *ctx;                        /* NULL while disconnected */
    char          host[256];                  /* TCP host, or "" for a unix socket */
    int           port;
    char          path[108];                  /* unix socket path */
    char          user[64];
    char          password[128];
    int           db;
    int           timeout_ms;
    int           req_ttl_s;
    int64_t       next_connect_ns;            /* no reconnect attempt before this */
    int           was_connected;              /* so a lost connection is logged once */
    char          sha[STATE_SCRIPT_COUNT][41];
    duet_state_stats_t stats;
    char          err[256];
};

/* An argument vector for one command, with room for formatted numbers. */
#define STATE_ARGS_MAX 40
typedef struct {
    int         argc;
    int         overflow;
    const char *argv[STATE_ARGS_MAX];
    size_t      len[STATE_ARGS_MAX];
    char        num[STATE_ARGS_MAX][24];
} state_args_t;

void state_args_str(state_args_t *a, const char *s);
void state_args_bin(state_args_t *a, const void *p, size_t n);
void state_args_int(state_args_t *a, int64_t v);
void state_args_uint(state_args_t *a, uint64_t v);

/* Sends n commands in one write and reads their n replies into replies[] (caller frees each
 * with freeReplyObject). Reconnects first if needed. DUET_ERR_UNAVAILABLE, and no replies, when
 * the connection fails: the connection is then dropped for the next call to re-establish. */
duet_status_t state_pipeline(duet_state_t *s, int n, const state_args_t *cmds,
                             redisReply **replies);

/* Runs script `script` with `nkeys` leading entries of `args` as KEYS, the rest as ARGV, by
 * EVALSHA; on NOSCRIPT loads it and runs it again in the same round trip. *reply_p is a
 * non-error reply on DUET_OK. */
duet_status_t state_script(duet_state_t *s, state_script_t script, int nkeys,
                           const state_args_t *args, redisReply **reply_p);

/* Maps an error reply to a status and keeps its text as the last error. */
duet_status_t state_reply_error(duet_state_t *s, const redisReply *r);

/* Formats the last error. */
void state_set_error(duet_state_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copies a reply string into a fixed buffer, truncating. */
void state_copy_str(char *dst, size_t cap, const char *src, size_t len);
/* Parses a decimal reply string; 0 when absent or malformed. */
int64_t state_parse_int(const char *s, size_t len);
uint64_t state_parse_uint(const char *s, size_t len);

/* Checks an id: 1..DUET_STATE_ID_MAX-1 printable bytes, no spaces. */
int state_id_valid(const char *id);

#endif
