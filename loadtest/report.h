/* loadtest/report.h — what duet-load prints and writes: the summary as text or one JSON object,
 * per-request results as CSV or JSON, the sweep, the machine, and gnuplot charts. */
#ifndef DUET_LOAD_REPORT_H
#define DUET_LOAD_REPORT_H

#include <stdio.h>

#include "run.h"
#include "stats.h"
#include "status.h"
#include "sweep.h"

/* How the load was made, for the report's header (every string may be NULL). */
typedef struct {
    const char *gateway;
    const char *model_id;
    const char *mode;          /* "open loop (Poisson)", "closed loop", "trace replay" */
    double rate;               /* offered req/s (0: not set) */
    int concurrency;           /* closed loop (0: open loop) */
    const char *trace;         /* trace path */
    double time_scale, length_scale;
    long trace_offset;
    int prompt_tokens, prompt_tokens_max, output_tokens;
    int ctx;
    size_t clipped;            /* requests whose lengths were clipped to ctx */
    unsigned long long seed;
    int interrupted;
} duet_load_info_t;

typedef struct {
    char cpu[256];
    int nproc;                 /* CPUs this process may run on */
} duet_load_machine_t;

void duet_load_machine_get(duet_load_machine_t *m);

/* JSON text helpers: a quoted, escaped string; a number, or null when not finite. */
void duet_load_json_string(FILE *out, const char *s);
void duet_load_json_number(FILE *out, double v);

/* The human-readable summary of one run. */
void duet_load_report_text(FILE *out, const duet_load_summary_t *s, const duet_load_info_t *info,
                           const duet_load_machine_t *m);
/* The summary as one JSON object (no trailing newline). */
void duet_load_report_json(FILE *out, const duet_load_summary_t *s, const duet_load_info_t *info,
                           const duet_load_machine_t *m);

/* A sweep: every probe with its summary, and the goodput. */
void duet_load_report_sweep_text(FILE *out, const duet_load_sweep_t *sw,
                                 const duet_load_summary_t *probes, double target,
                                 const duet_load_info_t *info, const duet_load_machine_t *m);
void duet_load_report_sweep_json(FILE *out, const duet_load_sweep_t *sw,
                                 const duet_load_summary_t *probes, double target,
                                 const duet_load_info_t *info, const duet_load_machine_t *m);

/* Writes the per-request results of n_runs runs to path: CSV when it ends in .csv, JSON (an
 * array of objects) when .json, INVALID otherwise; IO when it cannot be written. */
duet_status_t duet_load_write_results(const char *path, const duet_load_run_t *runs, int n_runs,
                                      char *err, size_t err_len);

/* Draws attainment against rate (when sw has probes) and the TTFT and TPOT CDFs of every run
 * into a PNG with gnuplot. UNSUPPORTED when gnuplot is not installed, IO when it fails. */
duet_status_t duet_load_plot(const char *path, const duet_load_run_t *runs, int n_runs,
                             const duet_load_sweep_t *sw, double target, const duet_load_slo_t *slo,
                             char *err, size_t err_len);

#endif
