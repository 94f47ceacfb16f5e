/* services/prefill/fence.h — which Prefill calls may still write into a decode instance's
 * blocks, and which that instance has released: the prefill side of the quarantine proof. */
#ifndef DUET_PREFILL_FENCE_H
#define DUET_PREFILL_FENCE_H

#include <stdint.h>

typedef struct duet_fence duet_fence_t;

/* Remembers the last `released_cap` released calls. NULL when out of memory. */
duet_fence_t *duet_fence_create(int released_cap);
void          duet_fence_destroy(duet_fence_t *fence);

/* A call begins: 0, or -1 when its (decode, request, attempt) was released already — it must not
 * run, since its decode instance may have reused the blocks — or when out of memory. */
int  duet_fence_enter(duet_fence_t *fence, const char *decode_id, const char *request_id, uint32_t attempt);
/* The call is over and every put it issued has completed or been abandoned with its endpoint. */
void duet_fence_leave(duet_fence_t *fence, const char *decode_id, const char *request_id, uint32_t attempt);
/* 1 (idle) when no such call is running; it is then released for good, so a copy that arrives
 * later is refused. 0 while one runs. */
int  duet_fence_release(duet_fence_t *fence, const char *decode_id, const char *request_id, uint32_t attempt);

#endif
