/* services/scheduler/main.c — duet-scheduler: the service runtime running the scheduler. */
#include "scheduler.h"

int main(int argc, char **argv)
{
    return duet_service_main(&duet_scheduler_service, argc, argv);
}
