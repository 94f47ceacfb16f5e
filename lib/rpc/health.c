/* lib/rpc/health.c — grpc.health.v1.Health/Check, answered by every duet server from its own
 * method table (Watch is not offered: clients poll Check). */
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rpc_internal.h"

static duet_status_t health_check(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    duet_rpc_server_t *server = arg;

    /* "" asks about the whole server; a service name must be one this server offers. */
    if (req->service && req->service[0] && !duet_rpc__server_has_service(server, req->service)) {
        duet_rpc_call_set_error(call, "unknown service %s", req->service);
        return DUET_ERR_NOT_FOUND;
    }
    resp.status = duet_rpc__server_serving(server)
                      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return duet_rpc_call_reply(call, &resp.base);
}

duet_rpc_method_t duet_rpc__health_method(duet_rpc_server_t *server)
{
    return (duet_rpc_method_t){
        .path = "/grpc.health.v1.Health/Check",
        .kind = DUET_RPC_UNARY,
        .request = &grpc__health__v1__health_check_request__descriptor,
        .unary = health_check,
        .arg = server,
    };
}
