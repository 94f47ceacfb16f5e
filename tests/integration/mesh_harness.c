/* tests/integration/mesh_harness.c — `duet up` as a child process for the integration tests. */
#include "mesh_harness.h"

#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"

/* Whether a loopback TCP port can be bound right now. */
static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Below Linux's ephemeral range (32768 and up), so no outgoing connection takes one of the ports
 * duet up numbers after the gateway's (metrics) between this check and their bind. */
int mesh_free_port(void)
{
    unsigned seed = (unsigned)getpid() * 2654435761u ^ (unsigned)duet_clock_ns();
    for (int attempt = 0; attempt < 1000; attempt++) {
        int port = 20000 + (int)(rand_r(&seed) % 12000);
        int run = 0;
        while (run < MESH_PORT_RUN && port_free(port + run))
            run++;
        if (run == MESH_PORT_RUN)
            return port;
    }
    return 0;
}

pid_t mesh_start(const char *duet_bin, const char *model, int port, const char *run_dir,
                 const char *const *extra)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        const char *argv[48] = {duet_bin, "up", "--model", model, "--port", port_s,
                                "--run-dir", run_dir, "--ctx", "1024"};
        int n = 10;
        for (int i = 0; extra && extra[i] && n < 47; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        execv(duet_bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    if (pid < 0)
        return -1;
    FILE *f = fdopen(fds[0], "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "gateway listening on "))
            return pid;   /* the pipe stays open so duet up never gets SIGPIPE */
    mesh_stop(pid);
    return -1;
}

int mesh_stop(pid_t pid)
{
    if (pid <= 0)
        return 0;
    kill(pid, SIGTERM);
    int status = 0;
    int64_t until = duet_clock_ns() + 30 * 1000000000ll;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (duet_clock_ns() >= until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(20000);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : status;
}

#define REPORT_PREFIX "sanitizer."

/* NAME=its old value:more (later options win, so ours beat the same ones set before). */
static void append_env(const char *name, const char *more)
{
    const char *was = getenv(name);
    char value[4096];
    snprintf(value, sizeof value, "%s%s%s", was ? was : "", was && *was ? ":" : "", more);
    setenv(name, value, 1);
}

void mesh_sanitizer_setup(const char *run_dir)
{
    /* log_path is a common flag that each of the three variables can set; all three say the
     * same. print_suppressions=0: a suppressed leak alone writes no file. */
    char opts[512];
    snprintf(opts, sizeof opts, "log_path=%s/%s:log_exe_name=1:print_suppressions=0", run_dir,
             REPORT_PREFIX "report");
    append_env("ASAN_OPTIONS", opts);
    append_env("LSAN_OPTIONS", opts);
    append_env("UBSAN_OPTIONS", opts);
    append_env("UBSAN_OPTIONS", "print_stacktrace=1");
}

int mesh_sanitizer_reports(const char *run_dir)
{
    DIR *d = opendir(run_dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, REPORT_PREFIX, strlen(REPORT_PREFIX)) != 0)
            continue;
        char path[1024], line[1024];
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        fprintf(stderr, "--- sanitizer report %s ---\n", path);
        FILE *f = fopen(path, "r");
        for (int i = 0; f && i < 400 && fgets(line, sizeof line, f); i++)
            fputs(line, stderr);
        if (f)
            fclose(f);
        n++;
    }
    closedir(d);
    return n;
}

int mesh_decode_free_blocks(duet_state_t *store)
{
    duet_state_inst_t *insts;
    int n, total = 0;
    if (duet_state_inst_list(store, DUET_ROLE_ANY, &insts, &n) != DUET_OK)
        return -1;
    for (int i = 0; i < n; i++)
        if (insts[i].role == DUET_ROLE_DECODE || insts[i].role == DUET_ROLE_MIXED)
            total += (int)insts[i].load.kv_blocks_free;
    duet_state_inst_list_free(insts);
    return total;
}

/* GET /metrics on 127.0.0.1:port; the body (malloc'd) or NULL. */
char *mesh_metrics_get(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return NULL;
    }
    const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t n;
    while (buf && (n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 4096)
            buf = realloc(buf, cap *= 2);
    }
    close(fd);
    if (!buf)
        return NULL;
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (!strstr(buf, " 200 ") || !body) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

double mesh_metric_value(const char *text, const char *sample)
{
    size_t n = strlen(sample);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, sample, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
    return -1;
}
