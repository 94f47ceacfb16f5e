/* lib/base/clock.h — monotonic and wall clocks in integer units. */
#ifndef DUET_BASE_CLOCK_H
#define DUET_BASE_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds: for durations only. */
static inline int64_t duet_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Wall-clock milliseconds since the epoch: for timestamps shared between processes. */
static inline int64_t duet_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
