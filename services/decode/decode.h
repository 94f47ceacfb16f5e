/* services/decode/decode.h — the decode service definition that duet-decode's main() runs. */
#ifndef DUET_SERVICES_DECODE_H
#define DUET_SERVICES_DECODE_H

#include "service.h"

extern const duet_service_def_t duet_decode_service;

#endif
