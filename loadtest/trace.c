/* loadtest/trace.c — reading request traces (TIMESTAMP,ContextTokens,GeneratedTokens CSV). */
#include "trace.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's
 * days_from_civil): no timegm(), no TZ environment, the same answer everywhere. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Reads exactly n digits at *p into *v. */
static int digits(const char **p, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return -1;
        x = x * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *v = x;
    return 0;
}

int duet_load_parse_timestamp(const char *text, double *seconds_p)
{
    const char *p = text;
    while (*p == ' ')
        p++;
    int y, mo, d, h, mi, s;
    if (digits(&p, 4, &y) == 0 && *p == '-') {
        p++;
        if (digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d) || (*p != ' ' && *p != 'T'))
            return -1;
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
            digits(&p, 2, &s))
            return -1;
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
            return -1;
        double frac = 0, unit = 0.1;
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p))
                return -1;
            for (; isdigit((unsigned char)*p); p++, unit /= 10)
                frac += (*p - '0') * unit;
        }
        if (*p == 'Z')
            p++;
        while (*p == ' ')
            p++;
        if (*p)
            return -1;
        *seconds_p = (double)(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) + frac;
        return 0;
    }
    /* A plain number of seconds (synthetic traces). */
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    while (end && *end == ' ')
        end++;
    if (errno || end == text || *end || v != v)
        return -1;
    *seconds_p = v;
    return 0;
}

/* Splits line (modified in place) at commas into at most cap fields; returns the count.
 * Quotes are not supported: trace fields are numbers and timestamps. */
static int split_csv(char *line, char **fields, int cap)
{
    int n = 0;
    char *p = line;
    for (;;) {
        if (n == cap)
            return cap + 1;
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c)
            break;
        *c = '\0';
        p = c + 1;
    }
    return n;
}

static void strip_eol(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
}

static int parse_count(const char *text, int *v)
{
    char *end;
    errno = 0;
    long x = strtol(text, &end, 10);
    while (*end == ' ')
        end++;
    if (errno || end == text || *end || x < 0 || x > INT_MAX)
        return -1;
    *v = (int)x;
    return 0;
}

static int blank(const char *s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return 0;
    return 1;
}

#define MAX_FIELDS 32

duet_status_t duet_load_trace_parse(FILE *f, const char *name, size_t skip, size_t max_rows,
                                    duet_load_trace_t *trace, char *err, size_t err_len)
{
    char line[4096];
    char *fields[MAX_FIELDS];
    long lineno = 1;
    if (!fgets(line, sizeof line, f)) {
        snprintf(err, err_len, "%s: empty file (expected a header TIMESTAMP,ContextTokens,GeneratedTokens)", name);
        return DUET_ERR_FORMAT;
    }
    strip_eol(line);
    /* A UTF-8 byte-order mark, as spreadsheet exports write. */
    char *hdr = strncmp(line, "\xEF\xBB\xBF", 3) == 0 ? line + 3 : line;
    int nf = split_csv(hdr, fields, MAX_FIELDS);
    int col_t = -1, col_c = -1, col_g = -1;
    for (int i = 0; i < nf && i < MAX_FIELDS; i++) {
        const char *h = fields[i];
        while (*h == ' ')
            h++;
        if (strcmp(h, "TIMESTAMP") == 0)
            col_t = i;
        else if (strcmp(h, "ContextTokens") == 0)
            col_c = i;
        else if (strcmp(h, "GeneratedTokens") == 0)
            col_g = i;
    }
    if (col_t < 0 || col_c < 0 || col_g < 0) {
        snprintf(err, err_len, "%s:1: header must name TIMESTAMP, ContextTokens and GeneratedTokens", name);
        return DUET_ERR_FORMAT;
    }
    int need = col_t > col_c ? col_t : col_c;
    need = (need > col_g ? need : col_g) + 1;

    duet_load_trace_row_t *rows = NULL;
    size_t n = 0, cap = 0, seen = 0;
    double t_first = 0, t_prev = 0;
    duet_status_t status = DUET_OK;
    while ((max_rows == 0 || n < max_rows) && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            snprintf(err, err_len, "%s:%ld: line too long", name, lineno);
            status = DUET_ERR_FORMAT;
            goto err_free_rows;
        }
        strip_eol(line);
        if (blank(line))
            continue;
        nf = split_csv(line, fields, MAX_FIELDS);
        if (nf < need || nf > MAX_FIELDS) {
            snprintf(err, err_len, "%s:%ld: expected %d comma-separated fields, found %d",
                     name, lineno, need, nf > MAX_FIELDS ? MAX_FIELDS + 1 : nf);
            status = DUET_ERR_FORMAT;
            goto err_free_rows;
        }
        double t;
        duet_load_trace_row_t row;
        if (duet_load_parse_timestamp(fields[col_t], &t) != 0) {
            snprintf(err, err_len, "%s:%ld: bad TIMESTAMP '%s' (expected YYYY-MM-DD HH:MM:SS[.frac] or seconds)",
                     name, lineno, fields[col_t]);
            status = DUET_ERR_FORMAT;
            goto err_free_rows;
        }
        if (parse_count(fields[col_c], &row.context_tokens) != 0 ||
            parse_count(fields[col_g], &row.generated_tokens) != 0) {
            snprintf(err, err_len, "%s:%ld: ContextTokens and GeneratedTokens must be non-negative integers",
                     name, lineno);
            status = DUET_ERR_FORMAT;
            goto err_free_rows;
        }
        if (seen > 0 && t < t_prev) {
            snprintf(err, err_len, "%s:%ld: TIMESTAMP goes back in time (rows must be in arrival order)",
                     name, lineno);
            status = DUET_ERR_FORMAT;
            goto err_free_rows;
        }
        t_prev = t;
        if (seen++ < skip)
            continue;
        if (n == 0)
            t_first = t;
        row.t_s = t - t_first;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            duet_load_trace_row_t *nr = realloc(rows, ncap * sizeof *nr);
            if (!nr) {
                snprintf(err, err_len, "%s: out of memory", name);
                status = DUET_ERR_NOMEM;
                goto err_free_rows;
            }
            rows = nr;
            cap = ncap;
        }
        rows[n++] = row;
    }
    if (ferror(f)) {
        snprintf(err, err_len, "%s: read error", name);
        status = DUET_ERR_IO;
        goto err_free_rows;
    }
    if (n == 0) {
        snprintf(err, err_len, "%s: no requests (after skipping %zu rows)", name, skip);
        status = DUET_ERR_FORMAT;
        goto err_free_rows;
    }
    trace->rows = rows;
    trace->n = n;
    return DUET_OK;

err_free_rows:
    free(rows);
    return status;
}

duet_status_t duet_load_trace_load(const char *path, size_t skip, size_t max_rows,
                                   duet_load_trace_t *trace, char *err, size_t err_len)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        return DUET_ERR_IO;
    }
    duet_status_t st = duet_load_trace_parse(f, path, skip, max_rows, trace, err, err_len);
    fclose(f);
    return st;
}

void duet_load_trace_cleanup(duet_load_trace_t *trace)
{
    free(trace->rows);
    trace->rows = NULL;
    trace->n = 0;
}

double duet_load_trace_rate(const duet_load_trace_t *trace)
{
    if (trace->n < 2 || trace->rows[trace->n - 1].t_s <= 0)
        return 0;
    return (double)(trace->n - 1) / trace->rows[trace->n - 1].t_s;
}
