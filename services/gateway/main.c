/* services/gateway/main.c — duet-gateway: the service runtime running the gateway. */
#include "gateway.h"

int main(int argc, char **argv)
{
    return duet_service_main(&duet_gateway_service, argc, argv);
}
