/* lib/base/log.c — one line per message, prefixed with the wall time and level. */
#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

static duet_log_level_t log_level = DUET_LOG_INFO;
static FILE *log_sink;

void duet_log_configure(duet_log_level_t level, FILE *sink)
{
    log_level = level;
    log_sink = sink;
}

int duet_log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void duet_log_write(duet_log_level_t level, const char *fmt, ...)
{
    static const char *const tags[] = {"E", "W", "I", "D"};
    if (level > log_level)
        return;
    FILE *out = log_sink ? log_sink : stderr;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int off = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s ", tm.tm_hour, tm.tm_min,
                       tm.tm_sec, ts.tv_nsec / 1000000, tags[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + off, sizeof line - (size_t)off, fmt, ap);
    va_end(ap);
    /* One fputs per message keeps lines from different threads whole. */
    size_t len = strlen(line);
    if (len + 1 < sizeof line) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, out);
    fflush(out);
}
