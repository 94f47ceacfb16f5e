/* lib/base/status.h — the one error type of duet: 0 is success, negative values are errors.
 * Only lib/rpc maps these to gRPC codes; everywhere else they are passed up unchanged. */
#ifndef DUET_BASE_STATUS_H
#define DUET_BASE_STATUS_H

typedef enum {
    DUET_OK                  = 0,
    DUET_ERR_INVALID         = -1,  /* bad argument or request field */
    DUET_ERR_NOMEM           = -2,
    DUET_ERR_IO              = -3,  /* a file or socket could not be read or written */
    DUET_ERR_FORMAT          = -4,  /* a file or message is malformed */
    DUET_ERR_UNSUPPORTED     = -5,  /* well-formed but not something duet handles */
    DUET_ERR_UNAVAILABLE     = -6,  /* a dependency is down: retry later */
    DUET_ERR_EXHAUSTED       = -7,  /* out of KV blocks, queue space or quota */
    DUET_ERR_NOT_FOUND       = -8,
    DUET_ERR_CANCELLED       = -9,
    DUET_ERR_DEADLINE        = -10,
    DUET_ERR_UNAUTHENTICATED = -11,
    DUET_ERR_INTERNAL        = -12, /* a broken invariant inside duet */
} duet_status_t;

/* A short constant name for the status ("invalid argument", ...). */
const char *duet_status_str(duet_status_t status);

#endif
