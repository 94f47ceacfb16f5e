/* loadtest/sweep.c — the goodput search over request rates. */
#include "sweep.h"

#include <string.h>

/* Runs a probe and records it; *good_p says whether it met the target. */
static duet_status_t step(const duet_load_sweep_conf_t *conf, duet_load_probe_fn probe, void *arg,
                          duet_load_sweep_t *sw, double rate, int *good_p)
{
    double a = 0;
    duet_status_t st = probe(rate, arg, &a);
    if (st != DUET_OK)
        return st;
    sw->probes[sw->n].rate = rate;
    sw->probes[sw->n].attainment = a;
    sw->n++;
    *good_p = a >= conf->target;
    if (*good_p && rate > sw->goodput)
        sw->goodput = rate;
    if (!*good_p && (sw->bad_rate == 0 || rate < sw->bad_rate))
        sw->bad_rate = rate;
    return DUET_OK;
}

duet_status_t duet_load_sweep_run(const duet_load_sweep_conf_t *conf, duet_load_probe_fn probe,
                                  void *arg, duet_load_sweep_t *sweep)
{
    memset(sweep, 0, sizeof *sweep);
    int max = conf->max_probes > 0 && conf->max_probes <= DUET_LOAD_SWEEP_MAX_PROBES
              ? conf->max_probes : DUET_LOAD_SWEEP_MAX_PROBES;
    if (conf->start_rate <= 0)
        return DUET_ERR_INVALID;
    int good;
    double rate = conf->start_rate;
    duet_status_t st = step(conf, probe, arg, sweep, rate, &good);
    if (st != DUET_OK)
        return st;
    /* Bracket: grow while good, shrink while bad. */
    int first_good = good;
    while (good == first_good && sweep->n < max) {
        double next = first_good ? rate * 2 : rate / 2;
        if ((first_good && conf->max_rate > 0 && next > conf->max_rate) ||
            (!first_good && next < conf->min_rate))
            return DUET_OK;
        rate = next;
        st = step(conf, probe, arg, sweep, rate, &good);
        if (st != DUET_OK)
            return st;
    }
    if (good == first_good)
        return DUET_OK;  /* out of probes before the outcome flipped */
    /* Bisect between the best good and the lowest bad rate. */
    while (sweep->n < max && (sweep->bad_rate - sweep->goodput) > conf->precision * sweep->goodput) {
        rate = (sweep->goodput + sweep->bad_rate) / 2;
        st = step(conf, probe, arg, sweep, rate, &good);
        if (st != DUET_OK)
            return st;
    }
    return DUET_OK;
}
