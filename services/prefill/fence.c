/* services/prefill/fence.c — the calls running and released, under one mutex. Both sets are small
 * (the calls queued on one instance; released ones only after failures), so they are arrays
 * searched linearly; the released ones form a ring that forgets the oldest. */
#include "fence.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 160   /* "<decode id>/<request id>/<attempt>" */

struct duet_fence {
    pthread_mutex_t mu;
    char (*running)[KEY_MAX];
    int n_running, cap_running;
    char (*released)[KEY_MAX];
    int released_cap, released_next, n_released;
};

static void make_key(char *key, const char *decode_id, const char *request_id, uint32_t attempt)
{
    snprintf(key, KEY_MAX, "%s/%s/%u", decode_id ? decode_id : "", request_id ? request_id : "", attempt);
}

duet_fence_t *duet_fence_create(int released_cap)
{
    duet_fence_t *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->released_cap = released_cap > 0 ? released_cap : 1;
    f->released = calloc((size_t)f->released_cap, KEY_MAX);
    if (!f->released) {
        free(f);
        return NULL;
    }
    pthread_mutex_init(&f->mu, NULL);
    return f;
}

void duet_fence_destroy(duet_fence_t *f)
{
    if (!f)
        return;
    pthread_mutex_destroy(&f->mu);
    free(f->running);
    free(f->released);
    free(f);
}

static int find(char (*set)[KEY_MAX], int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(set[i], key) == 0)
            return i;
    return -1;
}

int duet_fence_enter(duet_fence_t *f, const char *decode_id, const char *request_id, uint32_t attempt)
{
    char key[KEY_MAX];
    make_key(key, decode_id, request_id, attempt);
    int rc = -1;
    pthread_mutex_lock(&f->mu);
    if (find(f->released, f->n_released, key) >= 0)
        goto out;
    if (f->n_running == f->cap_running) {
        int cap = f->cap_running ? f->cap_running * 2 : 64;
        char (*p)[KEY_MAX] = realloc(f->running, (size_t)cap * KEY_MAX);
        if (!p)
            goto out;
        f->running = p;
        f->cap_running = cap;
    }
    memcpy(f->running[f->n_running++], key, KEY_MAX);
    rc = 0;
out:
    pthread_mutex_unlock(&f->mu);
    return rc;
}

void duet_fence_leave(duet_fence_t *f, const char *decode_id, const char *request_id, uint32_t attempt)
{
    char key[KEY_MAX];
    make_key(key, decode_id, request_id, attempt);
    pthread_mutex_lock(&f->mu);
    int i = find(f->running, f->n_running, key);
    if (i >= 0)
        memcpy(f->running[i], f->running[--f->n_running], KEY_MAX);
    pthread_mutex_unlock(&f->mu);
}

int duet_fence_release(duet_fence_t *f, const char *decode_id, const char *request_id, uint32_t attempt)
{
    char key[KEY_MAX];
    make_key(key, decode_id, request_id, attempt);
    pthread_mutex_lock(&f->mu);
    int idle = find(f->running, f->n_running, key) < 0;
    if (idle && find(f->released, f->n_released, key) < 0) {
        memcpy(f->released[f->released_next], key, KEY_MAX);
        f->released_next = (f->released_next + 1) % f->released_cap;
        if (f->n_released < f->released_cap)
            f->n_released++;
    }
    pthread_mutex_unlock(&f->mu);
    return idle;
}
