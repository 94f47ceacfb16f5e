/* lib/state/events.c — reading duet:events, the capped stream of request state transitions
 * that the request scripts append to (for `duet top` and debugging). */
#include <string.h>

#include "state_internal.h"

/* Fills ev from one XRANGE entry: [id, [field, value, ...]]. Returns 0 if malformed. */
static int parse_event(const redisReply *e, duet_state_event_t *ev)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return 0;
    memset(ev, 0, sizeof *ev);
    ev->from = ev->to = DUET_REQ_NONE;
    state_copy_str(ev->stream_id, sizeof ev->stream_id, e->element[0]->str, e->element[0]->len);
    const redisReply *kv = e->element[1];
    for (size_t i = 0; i + 1 < kv->elements; i += 2) {
        const redisReply *f = kv->element[i], *v = kv->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(f->str, "req") == 0)
            state_copy_str(ev->req_id, sizeof ev->req_id, v->str, v->len);
        else if (strcmp(f->str, "from") == 0)
            ev->from = duet_state_req_state_parse(v->str);
        else if (strcmp(f->str, "to") == 0)
            ev->to = duet_state_req_state_parse(v->str);
        else if (strcmp(f->str, "attempt") == 0)
            ev->attempt = (int)state_parse_int(v->str, v->len);
        else if (strcmp(f->str, "ms") == 0)
            ev->ms = state_parse_int(v->str, v->len);
    }
    return 1;
}

duet_status_t duet_state_events_read(duet_state_t *store, const char *after_id,
                                     duet_state_event_t *events, int max, int *n_p)
{
    if (!events || max <= 0 || !n_p || (after_id && strlen(after_id) > 40)) {
        state_set_error(store, "state: bad events arguments");
        return DUET_ERR_INVALID;
    }
    char start[48] = "-";
    if (after_id && after_id[0])
        snprintf(start, sizeof start, "(%s", after_id);   /* "(" excludes after_id itself */
    state_args_t a = {0};
    state_args_str(&a, "XRANGE");
    state_args_str(&a, "duet:events");
    state_args_str(&a, start);
    state_args_str(&a, "+");
    state_args_str(&a, "COUNT");
    state_args_int(&a, max);
    redisReply *r;
    duet_status_t st = state_pipeline(store, 1, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type == REDIS_REPLY_ERROR) {
        st = state_reply_error(store, r);
        goto out_free_reply;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements > (size_t)max) {
        state_set_error(store, "state: unexpected reply to XRANGE");
        st = DUET_ERR_INTERNAL;
        goto out_free_reply;
    }
    int n = 0;
    for (size_t i = 0; i < r->elements; i++)
        if (parse_event(r->element[i], &events[n]))
            n++;
    *n_p = n;
out_free_reply:
    freeReplyObject(r);
    return st;
}
