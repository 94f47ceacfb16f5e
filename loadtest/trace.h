/* loadtest/trace.h — request traces in CSV (TIMESTAMP,ContextTokens,GeneratedTokens, as the
 * Azure LLM inference traces publish them), read into memory for replay. */
#ifndef DUET_LOAD_TRACE_H
#define DUET_LOAD_TRACE_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

typedef struct {
    double t_s;             /* seconds since the first kept row */
    int    context_tokens;  /* prompt length */
    int    generated_tokens;
} duet_load_trace_row_t;

typedef struct {
    duet_load_trace_row_t *rows;  /* owned; freed by duet_load_trace_cleanup */
    size_t n;
} duet_load_trace_t;

/* Parses "2023-11-16 18:15:46.6805900" (also with 'T', fraction optional, read as UTC) or a
 * plain number of seconds into seconds since the epoch. Returns 0, or -1 when malformed. */
int duet_load_parse_timestamp(const char *text, double *seconds_p);

/* Reads a trace CSV from f: a header naming the columns TIMESTAMP, ContextTokens and
 * GeneratedTokens (any order, other columns ignored), then one row per request in time order.
 * Skips the first `skip` rows and keeps at most max_rows (0: all). Times are made relative to
 * the first kept row. On error, one line naming name:line goes to err and trace is untouched. */
duet_status_t duet_load_trace_parse(FILE *f, const char *name, size_t skip, size_t max_rows,
                                    duet_load_trace_t *trace, char *err, size_t err_len);
/* The same for a file path. IO when it cannot be opened. */
duet_status_t duet_load_trace_load(const char *path, size_t skip, size_t max_rows,
                                   duet_load_trace_t *trace, char *err, size_t err_len);
void          duet_load_trace_cleanup(duet_load_trace_t *trace);
/* Mean arrival rate of the rows (req/s of trace time), 0 with fewer than two rows or no span. */
double        duet_load_trace_rate(const duet_load_trace_t *trace);

#endif
