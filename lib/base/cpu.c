/* lib/base/cpu.c — CPU counts from the affinity mask, which respects taskset and cgroup pinning. */
#include "cpu.h"

#include <sched.h>
#include <unistd.h>

int duet_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
