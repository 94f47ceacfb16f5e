/* lib/state/state.h — duet's Redis store: request records and their compare-and-set state
 * machine, the instance registry with heartbeats, and the event stream (DESIGN.md §1, §2).
 *
 * Thread-safety: a duet_state_t is NOT thread-safe. Use one store per thread (each holds one
 * Redis connection); stores in different threads are independent.
 *
 * Failure model: every call that talks to Redis returns DUET_ERR_UNAVAILABLE when Redis cannot
 * be reached or does not answer within the store's timeout. The broken connection is dropped and
 * the next call reconnects (one bounded attempt, at most every DUET_STATE_RECONNECT_MS), so a
 * caller only has to retry later. Scripts are re-sent on NOSCRIPT, so a restarted Redis works.
 * UNAVAILABLE after a timeout does not prove a write was not applied (Redis may run it late);
 * transitions are compare-and-set, so retrying one that did apply comes back refused with
 * *state_p == to. */
#ifndef DUET_STATE_STATE_H
#define DUET_STATE_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DUET_STATE_ID_MAX        64     /* request and instance ids, with the NUL */
#define DUET_STATE_ADDR_MAX      128    /* gRPC "host:port", with the NUL */
#define DUET_STATE_NAME_MAX      128    /* model id, finish reason, version */
#define DUET_STATE_ERROR_MAX     256    /* error text kept in a request record */
#define DUET_STATE_INST_TTL_MS   3000   /* an instance vanishes this long after its last heartbeat */
#define DUET_STATE_REQ_TTL_S     3600   /* default lifetime of a finished request record */
#define DUET_STATE_EVENTS_MAXLEN 10000  /* duet:events is capped near this length */
#define DUET_STATE_RECONNECT_MS  100    /* a failed reconnect is not retried sooner than this */

typedef struct duet_state duet_state_t;

/* ---- connection ------------------------------------------------------------------------ */

/* Connects to "redis://[[user]:pass@]host[:port][/db]", "unix://[[user]:pass@]/path.sock" or
 * a bare "/path.sock" (no percent-decoding of the password). Every command, the connect included, gives up after timeout_ms.
 * Returns DUET_ERR_INVALID for a malformed url, DUET_ERR_UNAVAILABLE when Redis is unreachable,
 * DUET_ERR_UNAUTHENTICATED when the password is refused. Free the store with duet_state_close. */
duet_status_t duet_state_connect(const char *url, int timeout_ms, duet_state_t **store_p);
void          duet_state_close(duet_state_t *store);
/* With no password in the url, connect takes it from the environment: DUET_REDIS_PASSWORD and,
 * for an ACL user other than "default", DUET_REDIS_USER; so it need not be on a command line.
 * The password is sent with AUTH on every (re)connect. */
/* The url with its password replaced by "***", for logs. */
void          duet_state_url_redact(const char *url, char *out, size_t cap);

/* Lifetime of request records once they reach DONE, FAILED or CANCELLED (default 1 hour). */
void          duet_state_set_req_ttl(duet_state_t *store, int ttl_s);

/* A round trip to Redis; reconnects first if the connection was lost. */
duet_status_t duet_state_ping(duet_state_t *store);

/* Why the last failed or refused call failed; valid until the next call on this store. */
const char   *duet_state_last_error(const duet_state_t *store);

typedef struct {
    uint64_t round_trips;    /* pipelines sent (one per call on the hot paths) */
    uint64_t reconnects;     /* connections re-established after a loss */
    uint64_t script_loads;   /* NOSCRIPT answers that made the store re-send a script */
} duet_state_stats_t;
void          duet_state_stats(const duet_state_t *store, duet_state_stats_t *stats_p);

/* ---- requests: duet:req:<id> ----------------------------------------------------------- */

typedef enum {
    DUET_REQ_NONE = -1,      /* "before creation", only in events */
    DUET_REQ_QUEUED = 0,
    DUET_REQ_ROUTED,
    DUET_REQ_PREFILLING,
    DUET_REQ_DECODING,
    DUET_REQ_DONE,
    DUET_REQ_FAILED,
    DUET_REQ_CANCELLED,
    DUET_REQ_STATE_COUNT
} duet_req_state_t;

/* "QUEUED", "ROUTED", ... as stored in Redis; "" for DUET_REQ_NONE. */
const char   *duet_state_req_state_name(duet_req_state_t state);
/* The state named `name`, or DUET_REQ_NONE when it names none. */
duet_req_state_t duet_state_req_state_parse(const char *name);
/* 1 for DONE, FAILED and CANCELLED. */
int           duet_state_req_state_is_terminal(duet_req_state_t state);

/* What the gateway knows when it records a request. */
typedef struct {
    const char *id;               /* at most DUET_STATE_ID_MAX-1 bytes */
    const char *model;            /* NULL: none */
    int64_t     prompt_tokens;
    int64_t     max_tokens;
    int64_t     arrival_ms;       /* wall ms; 0: Redis server time */
} duet_state_req_new_t;

/* Fields a transition may set together with the state; the *_INIT value changes nothing. */
typedef struct {
    const char *prefill_inst;     /* NULL: unchanged */
    const char *decode_inst;      /* NULL: unchanged */
    int64_t     kv_bytes;         /* < 0: unchanged */
    int64_t     generated_tokens; /* < 0: unchanged */
    const char *finish_reason;    /* NULL: unchanged ("stop", "length", ...) */
    const char *error;            /* NULL: unchanged */
} duet_state_req_update_t;
#define DUET_STATE_REQ_UPDATE_INIT {NULL, NULL, -1, -1, NULL, NULL}

/* A request record as read back; absent fields read as 0 / "". Times are wall ms (Redis clock). */
typedef struct {
    char             id[DUET_STATE_ID_MAX];
    duet_req_state_t state;
    int              attempt;                    /* 0, then +1 per retry */
    char             model[DUET_STATE_NAME_MAX];
    char             prefill_inst[DUET_STATE_ID_MAX];
    char             decode_inst[DUET_STATE_ID_MAX];
    int64_t          prompt_tokens;
    int64_t          max_tokens;
    int64_t          generated_tokens;
    int64_t          kv_bytes;
    int64_t          arrival_ms;                 /* set by duet_state_req_create */
    int64_t          routed_ms;                  /* last entry into ROUTED */
    int64_t          prefill_start_ms;           /* last entry into PREFILLING */
    int64_t          first_token_ms;             /* last entry into DECODING */
    int64_t          done_ms;                    /* entry into DONE, FAILED or CANCELLED */
    char             finish_reason[DUET_STATE_NAME_MAX];
    char             error[DUET_STATE_ERROR_MAX];
} duet_state_req_t;

/* Records a new request in QUEUED, attempt 0, and appends its creation event.
 * DUET_ERR_INVALID if the id is malformed or already recorded. One round trip. */
duet_status_t duet_state_req_create(duet_state_t *store, const duet_state_req_new_t *req);

/* Moves request `id` from `from` to `to` if, and only if, it is in `from` now; sets the
 * timestamp of `to`, the fields of `update` (NULL: none), appends an event, and on a terminal
 * state sets the record's TTL — all in one Lua script, one round trip.
 * `to` == ROUTED from ROUTED, PREFILLING or DECODING is a retry: attempt goes up by one.
 * Returns DUET_OK; DUET_ERR_INVALID when from→to is not an edge of the state machine or the
 * record is not in `from` (refused: nothing is changed); DUET_ERR_NOT_FOUND when there is no
 * record. *state_p (may be NULL) receives the state found, on DUET_OK and on a refusal. */
duet_status_t duet_state_req_transition(duet_state_t *store, const char *id,
                                        duet_req_state_t from, duet_req_state_t to,
                                        const duet_state_req_update_t *update,
                                        duet_req_state_t *state_p);

/* Reads the whole record. DUET_ERR_NOT_FOUND if there is none (or it expired). */
duet_status_t duet_state_req_get(duet_state_t *store, const char *id, duet_state_req_t *req_p);

/* ---- instances: duet:inst:<id>, duet:insts -------------------------------------------- */

typedef enum {
    DUET_ROLE_ANY = -1,           /* list filter only */
    DUET_ROLE_PREFILL = 0,
    DUET_ROLE_DECODE,
    DUET_ROLE_MIXED,
    DUET_ROLE_GATEWAY,
    DUET_ROLE_SCHEDULER,
    DUET_ROLE_COUNT
} duet_inst_role_t;

const char      *duet_state_role_name(duet_inst_role_t role);   /* "prefill", ... */
duet_inst_role_t duet_state_role_parse(const char *name);       /* DUET_ROLE_ANY if none */

/* The load an instance reports with every heartbeat. */
typedef struct {
    int64_t kv_blocks_free;
    int64_t queued_tokens;       /* prompt tokens waiting for prefill */
    int64_t running_seqs;        /* sequences in the decode batch */
} duet_state_load_t;

/* One instance. For duet_state_inst_register the pointers are the caller's and only read;
 * in a list returned by duet_state_inst_list they point into that list's one allocation. */
typedef struct {
    char              id[DUET_STATE_ID_MAX];
    duet_inst_role_t  role;
    char              grpc_addr[DUET_STATE_ADDR_MAX];
    char              model[DUET_STATE_NAME_MAX];
    char              version[DUET_STATE_NAME_MAX];
    const uint8_t    *ucx_addr;          /* UCX worker address, binary */
    size_t            ucx_addr_len;
    const uint8_t    *rkey;              /* packed rkey of the KV pool, binary */
    size_t            rkey_len;
    uint64_t          pool_base;         /* remote address of the KV pool */
    int64_t           kv_blocks_total;
    duet_state_load_t load;
    int64_t           last_heartbeat_ms; /* read back only */
} duet_state_inst_t;

/* Writes "<hostname>-<pid>-<8 random hex>" into id (cap >= DUET_STATE_ID_MAX is enough). */
duet_status_t duet_state_inst_make_id(char *id, size_t cap);

/* (Re)writes the whole record of info->id, live for DUET_STATE_INST_TTL_MS. One round trip. */
duet_status_t duet_state_inst_register(duet_state_t *store, const duet_state_inst_t *info);

/* Refreshes the TTL and the load of a registered instance. One round trip, atomic.
 * DUET_ERR_NOT_FOUND when its record has already expired (or was removed): register again —
 * a heartbeat never resurrects a record it would only half fill. */
duet_status_t duet_state_inst_heartbeat(duet_state_t *store, const char *id,
                                        const duet_state_load_t *load);

/* The live instances of `role` (DUET_ROLE_ANY: all), oldest heartbeat first; prunes members of
 * duet:insts whose heartbeat is older than the TTL. One round trip. On success *insts_p is one
 * allocation holding the array and every blob it points to (NULL when *n_p is 0); free it with
 * duet_state_inst_list_free. */
duet_status_t duet_state_inst_list(duet_state_t *store, duet_inst_role_t role,
                                   duet_state_inst_t **insts_p, int *n_p);
void          duet_state_inst_list_free(duet_state_inst_t *insts);

/* Deletes the record and its registry entry (a clean shutdown). Absent is not an error. */
duet_status_t duet_state_inst_remove(duet_state_t *store, const char *id);

/* ---- events: duet:events --------------------------------------------------------------- */

typedef struct {
    char             stream_id[32];      /* "<ms>-<seq>": pass back as after_id to continue */
    char             req_id[DUET_STATE_ID_MAX];
    duet_req_state_t from;               /* DUET_REQ_NONE for the creation event */
    duet_req_state_t to;
    int              attempt;
    int64_t          ms;
} duet_state_event_t;

/* Reads up to `max` events that come after stream id `after_id` (NULL or "": from the oldest
 * kept), in order, into events[0 .. *n_p). */
duet_status_t duet_state_events_read(duet_state_t *store, const char *after_id,
                                     duet_state_event_t *events, int max, int *n_p);

#endif
