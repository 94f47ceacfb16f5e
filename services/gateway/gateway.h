/* services/gateway/gateway.h — the gateway's service definition, run by main.c. */
#ifndef DUET_SERVICES_GATEWAY_H
#define DUET_SERVICES_GATEWAY_H

#include "service.h"

extern const duet_service_def_t duet_gateway_service;

#endif
