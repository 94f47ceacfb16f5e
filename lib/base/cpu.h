/* lib/base/cpu.h — facts about the CPUs this process may run on. */
#ifndef DUET_BASE_CPU_H
#define DUET_BASE_CPU_H

/* The number of CPUs in this process's affinity mask (what it may actually use). */
int duet_cpu_count(void);

#endif
