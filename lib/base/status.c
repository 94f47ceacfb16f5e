/* lib/base/status.c — names of duet_status_t values. */
#include "status.h"

const char *duet_status_str(duet_status_t status)
{
    switch (status) {
    case DUET_OK:                  return "ok";
    case DUET_ERR_INVALID:         return "invalid argument";
    case DUET_ERR_NOMEM:           return "out of memory";
    case DUET_ERR_IO:              return "i/o error";
    case DUET_ERR_FORMAT:          return "malformed data";
    case DUET_ERR_UNSUPPORTED:     return "unsupported";
    case DUET_ERR_UNAVAILABLE:     return "unavailable";
    case DUET_ERR_EXHAUSTED:       return "resource exhausted";
    case DUET_ERR_NOT_FOUND:       return "not found";
    case DUET_ERR_CANCELLED:       return "cancelled";
    case DUET_ERR_DEADLINE:        return "deadline exceeded";
    case DUET_ERR_UNAUTHENTICATED: return "unauthenticated";
    case DUET_ERR_INTERNAL:        return "internal error";
    }
    return "unknown status";
}
