/* lib/rpc/status_map.c — the one mapping between duet_status_t and gRPC status codes. */
#include "rpc.h"

grpc_status_code duet_rpc_status_to_grpc(duet_status_t status)
{
    switch (status) {
    case DUET_OK:                  return GRPC_STATUS_OK;
    case DUET_ERR_INVALID:         return GRPC_STATUS_INVALID_ARGUMENT;
    case DUET_ERR_UNAUTHENTICATED: return GRPC_STATUS_UNAUTHENTICATED;
    case DUET_ERR_EXHAUSTED:       return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case DUET_ERR_UNAVAILABLE:     return GRPC_STATUS_UNAVAILABLE;
    case DUET_ERR_DEADLINE:        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case DUET_ERR_CANCELLED:       return GRPC_STATUS_CANCELLED;
    case DUET_ERR_NOT_FOUND:       return GRPC_STATUS_NOT_FOUND;
    case DUET_ERR_UNSUPPORTED:     return GRPC_STATUS_UNIMPLEMENTED;
    default:                       return GRPC_STATUS_INTERNAL;
    }
}

duet_status_t duet_rpc_status_from_grpc(grpc_status_code code)
{
    switch (code) {
    case GRPC_STATUS_OK:                  return DUET_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_OUT_OF_RANGE:        return DUET_ERR_INVALID;
    case GRPC_STATUS_UNAUTHENTICATED:
    case GRPC_STATUS_PERMISSION_DENIED:   return DUET_ERR_UNAUTHENTICATED;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:  return DUET_ERR_EXHAUSTED;
    /* ABORTED is a concurrency conflict: retrying is the right reaction, as for UNAVAILABLE. */
    case GRPC_STATUS_ABORTED:
    case GRPC_STATUS_UNAVAILABLE:         return DUET_ERR_UNAVAILABLE;
    case GRPC_STATUS_DEADLINE_EXCEEDED:   return DUET_ERR_DEADLINE;
    case GRPC_STATUS_CANCELLED:           return DUET_ERR_CANCELLED;
    case GRPC_STATUS_NOT_FOUND:           return DUET_ERR_NOT_FOUND;
    case GRPC_STATUS_UNIMPLEMENTED:       return DUET_ERR_UNSUPPORTED;
    default:                              return DUET_ERR_INTERNAL;
    }
}
