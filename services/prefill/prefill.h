/* services/prefill/prefill.h — the prefill service definition that duet-prefill's main() runs. */
#ifndef DUET_SERVICES_PREFILL_H
#define DUET_SERVICES_PREFILL_H

#include "service.h"

extern const duet_service_def_t duet_prefill_service;

#endif
