/* loadtest/sweep.h — goodput search: the highest request rate whose SLO attainment stays at or
 * above a target (DistServe: 90 %), found by doubling (or halving) the rate until the outcome
 * flips, then bisecting between the last good and the first bad rate. */
#ifndef DUET_LOAD_SWEEP_H
#define DUET_LOAD_SWEEP_H

#include "status.h"

#define DUET_LOAD_SWEEP_MAX_PROBES 32

/* Runs one probe at `rate` and sets *attainment (0..1). A non-OK status aborts the search. */
typedef duet_status_t (*duet_load_probe_fn)(double rate, void *arg, double *attainment);

typedef struct {
    double start_rate;   /* first probe, req/s (> 0) */
    double target;       /* attainment a rate must reach to count as good, e.g. 0.9 */
    double precision;    /* stop bisecting when (bad - good) / good <= this, e.g. 0.1 */
    double min_rate;     /* stop halving below this: goodput 0 */
    double max_rate;     /* stop doubling above this: goodput is the last good rate */
    int max_probes;      /* <= DUET_LOAD_SWEEP_MAX_PROBES */
} duet_load_sweep_conf_t;

typedef struct {
    struct {
        double rate, attainment;
    } probes[DUET_LOAD_SWEEP_MAX_PROBES];
    int n;
    double goodput;      /* highest good rate probed; 0 when none was good */
    double bad_rate;     /* lowest bad rate probed; 0 when none was bad */
} duet_load_sweep_t;

/* Probes in order and records every probe in sweep, also when a probe fails. */
duet_status_t duet_load_sweep_run(const duet_load_sweep_conf_t *conf, duet_load_probe_fn probe,
                                  void *arg, duet_load_sweep_t *sweep);

#endif
