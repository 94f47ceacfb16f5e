/* lib/base/log.h — leveled logging to one process-wide sink (stderr by default).
 * The sink is the only global state duet keeps. */
#ifndef DUET_BASE_LOG_H
#define DUET_BASE_LOG_H

#include <stdio.h>

typedef enum { DUET_LOG_ERROR, DUET_LOG_WARN, DUET_LOG_INFO, DUET_LOG_DEBUG } duet_log_level_t;

/* Messages above `level` are dropped; `sink` NULL means stderr. Not thread-safe: call at start-up. */
void duet_log_configure(duet_log_level_t level, FILE *sink);
/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int  duet_log_level_parse(const char *name);

void duet_log_write(duet_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define duet_log_error(...) duet_log_write(DUET_LOG_ERROR, __VA_ARGS__)
#define duet_log_warn(...)  duet_log_write(DUET_LOG_WARN, __VA_ARGS__)
#define duet_log_info(...)  duet_log_write(DUET_LOG_INFO, __VA_ARGS__)
#define duet_log_debug(...) duet_log_write(DUET_LOG_DEBUG, __VA_ARGS__)

#endif
