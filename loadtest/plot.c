/* loadtest/plot.c — charts of a load test drawn by gnuplot (run as a child process on a
 * generated script): SLO attainment against rate for a sweep, and TTFT and TPOT CDFs. */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"

extern char **environ;

/* 1 when an executable named name is on PATH. */
static int on_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    char buf[4096];
    while (*path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, name);
        if (n > 0 && access(buf, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Writes one data block per run: sorted values and their cumulative share. Returns the number
 * of non-empty blocks, or -1 when out of memory. Empty runs get a block with no points so that
 * gnuplot's "index k" still lines up with run k; they are left out of the plot command. */
static int write_cdf(FILE *f, const duet_load_run_t *runs, int n_runs, int tpot, int *has_data)
{
    int blocks = 0;
    for (int k = 0; k < n_runs; k++) {
        double *v = malloc((runs[k].n ? runs[k].n : 1) * sizeof *v);
        if (!v)
            return -1;
        size_t n = 0;
        for (size_t i = 0; i < runs[k].n; i++)
            n += (size_t)(tpot ? duet_load_tpot_ms(&runs[k].results[i], &v[n])
                               : duet_load_ttft_ms(&runs[k].results[i], &v[n]));
        qsort(v, n, sizeof *v, cmp_double);
        fprintf(f, "# run %d\n", k);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%.4f %.6f\n", v[i], (double)(i + 1) / (double)n);
        if (n == 0)
            fprintf(f, "nan nan\n");
        fputs("\n\n", f);
        has_data[k] = n > 0;
        blocks += n > 0;
        free(v);
    }
    return blocks;
}

static void plot_cdf(FILE *s, const char *title, const char *file, const duet_load_run_t *runs,
                     int n_runs, const int *has_data, double slo_ms)
{
    fprintf(s, "set title '%s'\nset xlabel 'ms'\nset ylabel 'share of ok requests'\n", title);
    fputs("set yrange [0:1]\nset xrange [0:*]\nunset arrow\n", s);
    if (slo_ms > 0)
        fprintf(s, "set arrow from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb 'red'\n", slo_ms, slo_ms);
    fputs("plot ", s);
    int first = 1;
    for (int k = 0; k < n_runs; k++) {
        if (!has_data[k])
            continue;
        char label[64];
        if (runs[k].n && runs[k].results[0].rate > 0)
            snprintf(label, sizeof label, "%.3g req/s", runs[k].results[0].rate);
        else
            snprintf(label, sizeof label, n_runs > 1 ? "run %d" : "all", k + 1);
        fprintf(s, "%s'%s' index %d using 1:2 with steps title '%s'", first ? "" : ", ", file, k, label);
        first = 0;
    }
    if (first)
        fputs("NaN notitle", s);
    fputc('\n', s);
}

duet_status_t duet_load_plot(const char *path, const duet_load_run_t *runs, int n_runs,
                             const duet_load_sweep_t *sw, double target, const duet_load_slo_t *slo,
                             char *err, size_t err_len)
{
    if (!on_path("gnuplot")) {
        snprintf(err, err_len, "--plot %s: gnuplot is not installed (apt install gnuplot-nox); no plot drawn", path);
        return DUET_ERR_UNSUPPORTED;
    }
    if (strchr(path, '\'')) {
        snprintf(err, err_len, "--plot %s: a quote in the file name", path);
        return DUET_ERR_INVALID;
    }
    char dir[] = "/tmp/duet-load-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(err, err_len, "--plot: temporary directory: %s", strerror(errno));
        return DUET_ERR_IO;
    }
    duet_status_t status = DUET_OK;
    char ttft_file[64], tpot_file[64], rate_file[64], script_file[64];
    snprintf(ttft_file, sizeof ttft_file, "%s/ttft.dat", dir);
    snprintf(tpot_file, sizeof tpot_file, "%s/tpot.dat", dir);
    snprintf(rate_file, sizeof rate_file, "%s/rate.dat", dir);
    snprintf(script_file, sizeof script_file, "%s/plot.gp", dir);
    int *has_ttft = calloc((size_t)n_runs + 1, sizeof *has_ttft);
    int *has_tpot = calloc((size_t)n_runs + 1, sizeof *has_tpot);
    FILE *ft = fopen(ttft_file, "w"), *fp = fopen(tpot_file, "w"), *fr = fopen(rate_file, "w");
    FILE *fs = fopen(script_file, "w");
    if (!has_ttft || !has_tpot || !ft || !fp || !fr || !fs) {
        snprintf(err, err_len, "--plot: cannot write temporary files in %s", dir);
        status = DUET_ERR_IO;
        goto out_close;
    }
    if (write_cdf(ft, runs, n_runs, 0, has_ttft) < 0 || write_cdf(fp, runs, n_runs, 1, has_tpot) < 0) {
        snprintf(err, err_len, "--plot: out of memory");
        status = DUET_ERR_NOMEM;
        goto out_close;
    }
    int with_sweep = sw && sw->n > 0;
    if (with_sweep) {
        /* Probes in rate order, so the line reads left to right. */
        int order[DUET_LOAD_SWEEP_MAX_PROBES];
        for (int i = 0; i < sw->n; i++)
            order[i] = i;
        for (int i = 1; i < sw->n; i++)
            for (int j = i; j > 0 && sw->probes[order[j]].rate < sw->probes[order[j - 1]].rate; j--) {
                int t = order[j];
                order[j] = order[j - 1];
                order[j - 1] = t;
            }
        for (int i = 0; i < sw->n; i++)
            fprintf(fr, "%.6g %.6f\n", sw->probes[order[i]].rate, 100 * sw->probes[order[i]].attainment);
    }
    int panels = with_sweep ? 3 : 2;
    fprintf(fs, "set terminal pngcairo size %d,480 font ',10'\nset output '%s'\n", 560 * panels, path);
    fprintf(fs, "set multiplot layout 1,%d\nset grid\nset key bottom right\n", panels);
    if (with_sweep) {
        fputs("set title 'SLO attainment vs rate'\nset xlabel 'request rate (req/s)'\n"
              "set ylabel 'attainment (%)'\nset yrange [0:105]\nset xrange [0:*]\n", fs);
        fprintf(fs, "plot '%s' using 1:2 with linespoints pt 7 title 'attainment', %g with lines dt 2 lc rgb 'red' title 'target'\n",
                rate_file, 100 * target);
        if (sw->goodput > 0)
            fprintf(fs, "# goodput %.6g req/s\n", sw->goodput);
    }
    plot_cdf(fs, "TTFT CDF", ttft_file, runs, n_runs, has_ttft, slo->ttft_ms);
    plot_cdf(fs, "TPOT CDF", tpot_file, runs, n_runs, has_tpot, slo->tpot_ms);
    fputs("unset multiplot\n", fs);

out_close:
    if (ft)
        fclose(ft);
    if (fp)
        fclose(fp);
    if (fr)
        fclose(fr);
    if (fs)
        fclose(fs);
    free(has_ttft);
    free(has_tpot);
    if (status == DUET_OK) {
        char *argv[] = {"gnuplot", script_file, NULL};
        pid_t pid;
        int rc = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ), ws = 0;
        if (rc != 0) {
            snprintf(err, err_len, "--plot: cannot run gnuplot: %s", strerror(rc));
            status = DUET_ERR_IO;
        } else if (waitpid(pid, &ws, 0) < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
            snprintf(err, err_len, "--plot %s: gnuplot failed (its script: %s)", path, script_file);
            status = DUET_ERR_IO;
        }
    }
    if (status == DUET_OK) {
        unlink(ttft_file);
        unlink(tpot_file);
        unlink(rate_file);
        unlink(script_file);
        rmdir(dir);
    }
    return status;
}
