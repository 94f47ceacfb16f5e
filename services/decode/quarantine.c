/* services/decode/quarantine.c — quarantined KV blocks, a group per failed Prefill call, and the
 * Release calls that free them. A group whose call is out is never freed, so a job's group
 * pointer stays valid until its answer is back. */
#include "quarantine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "duet/v1/prefill.pb-c.h"
#include "log.h"
#include "state.h"

#define RELEASE_ASK_MS     500    /* between Prefill.Release calls for one group */
#define RELEASE_TIMEOUT_MS 1000

typedef struct group {
    struct group *next;
    int32_t *blocks;
    int n_blocks;
    char request_id[DUET_STATE_ID_MAX];
    uint32_t attempt;
    char prefill_id[DUET_STATE_ID_MAX];
    char addr[DUET_STATE_ADDR_MAX];
    int64_t since_ns, until_ns;     /* quarantined at; given back unproven at */
    int64_t next_ask_ns;
    bool asking;                    /* a Release call is out */
} group_t;

struct duet_release_job {
    duet_quarantine_t *q;
    pthread_t thread;
    group_t *group;                 /* not touched by the helper thread */
    char request_id[DUET_STATE_ID_MAX];
    uint32_t attempt;
    char addr[DUET_STATE_ADDR_MAX];
    bool idle;
    duet_status_t status;
};

struct duet_quarantine {
    duet_quarantine_conf_t conf;
    group_t *groups;
};

duet_quarantine_t *duet_quarantine_create(const duet_quarantine_conf_t *conf)
{
    duet_quarantine_t *q = calloc(1, sizeof *q);
    if (q)
        q->conf = *conf;
    return q;
}

static void group_free(duet_quarantine_t *q, group_t *g)
{
    for (group_t **pp = &q->groups; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    for (int i = 0; i < g->n_blocks; i++)
        duet_kv_block_unref(q->conf.cache, g->blocks[i]);
    free(g->blocks);
    free(g);
}

void duet_quarantine_destroy(duet_quarantine_t *q)
{
    if (!q)
        return;
    while (q->groups)
        group_free(q, q->groups);
    free(q);
}

bool duet_quarantine_empty(const duet_quarantine_t *q)
{
    return !q->groups;
}

void duet_quarantine_hold(duet_quarantine_t *q, const int32_t *blocks, int n, const char *request_id,
                          uint32_t attempt, const char *prefill_id, const char *addr)
{
    group_t *g = calloc(1, sizeof *g);
    if (g)
        g->blocks = malloc((size_t)n * sizeof *g->blocks);
    if (!g || !g->blocks) {
        free(g);
        duet_log_error("decode: request %s: cannot hold its blocks back; they are reused at once", request_id);
        return;
    }
    for (int i = 0; i < n; i++) {
        g->blocks[i] = blocks[i];
        duet_kv_block_ref(q->conf.cache, blocks[i]);
    }
    g->n_blocks = n;
    snprintf(g->request_id, sizeof g->request_id, "%s", request_id);
    g->attempt = attempt;
    snprintf(g->prefill_id, sizeof g->prefill_id, "%s", prefill_id);
    snprintf(g->addr, sizeof g->addr, "%s", addr);
    g->since_ns = g->next_ask_ns = duet_clock_ns();
    g->until_ns = g->since_ns + (int64_t)q->conf.max_ms * 1000000;
    g->next = q->groups;
    q->groups = g;
}

static void *release_call_main(void *arg)
{
    duet_release_job_t *j = arg;
    duet_quarantine_t *q = j->q;
    Duet__V1__ReleaseRequest req = DUET__V1__RELEASE_REQUEST__INIT;
    req.request_id = j->request_id;
    req.attempt = j->attempt;
    req.decode_instance_id = (char *)q->conf.decode_id;
    duet_rpc_opts_t opts = {.timeout_ms = RELEASE_TIMEOUT_MS};
    ProtobufCMessage *resp = NULL;
    j->status = duet_rpc_client_unary(q->conf.client, j->addr, "/duet.v1.Prefill/Release", &req.base,
                                      &duet__v1__release_response__descriptor, &opts, &resp);
    if (j->status == DUET_OK) {
        j->idle = ((const Duet__V1__ReleaseResponse *)resp)->idle;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    q->conf.post(q->conf.user, j);
    return NULL;
}

int duet_quarantine_tick(duet_quarantine_t *q, bool may_ask)
{
    int64_t now = duet_clock_ns();
    int started = 0;
    for (group_t *g = q->groups, *next; g; g = next) {
        next = g->next;
        if (!g->asking && now >= g->until_ns) {
            duet_log_warn("decode: request %s: %d blocks of its failed prefill on %s back in the pool after "
                          "%.1f s without proof that instance stopped writing", g->request_id, g->n_blocks,
                          g->prefill_id, (now - g->since_ns) / 1e9);
            group_free(q, g);
            continue;
        }
        if (g->asking || now < g->next_ask_ns || !may_ask)
            continue;
        duet_release_job_t *j = calloc(1, sizeof *j);
        if (!j)
            continue;
        j->q = q;
        j->group = g;
        snprintf(j->request_id, sizeof j->request_id, "%s", g->request_id);
        j->attempt = g->attempt;
        snprintf(j->addr, sizeof j->addr, "%s", g->addr);
        if (pthread_create(&j->thread, NULL, release_call_main, j) != 0) {
            free(j);
            continue;
        }
        g->asking = true;
        started++;
    }
    return started;
}

void duet_quarantine_answer(duet_quarantine_t *q, duet_release_job_t *j)
{
    pthread_join(j->thread, NULL);
    group_t *g = j->group;
    g->asking = false;
    if (j->status == DUET_OK && j->idle) {
        duet_log_info("decode: request %s: %s proved it stopped writing; %d blocks back in the pool after %.1f s",
                      g->request_id, g->prefill_id, g->n_blocks, (duet_clock_ns() - g->since_ns) / 1e9);
        group_free(q, g);
    } else {
        g->next_ask_ns = duet_clock_ns() + (int64_t)RELEASE_ASK_MS * 1000000;
    }
    free(j);
}
