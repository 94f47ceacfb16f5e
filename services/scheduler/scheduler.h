/* services/scheduler/scheduler.h — the scheduler's service definition, run by main.c. */
#ifndef DUET_SERVICES_SCHEDULER_H
#define DUET_SERVICES_SCHEDULER_H

#include "service.h"

extern const duet_service_def_t duet_scheduler_service;

#endif
