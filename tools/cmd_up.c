/* tools/cmd_up.c — `duet up`: the whole mesh on one machine. Starts redis-server (on a unix socket
 * in a run directory) unless --redis is given, then the scheduler, the prefill, decode and mixed
 * instances (pinned to disjoint cores when there are enough) and the gateway; waits until every
 * one is registered and the gateway answers its health check; prints where the gateway listens;
 * restarts any process that exits (Redis included); and on Ctrl-C or SIGTERM stops them all,
 * gateway first. Each process's pid is in RUN_DIR/NAME.pid (redis, scheduler, prefill-0, ...). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "commands.h"
#include "conf.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc.h"
#include "state.h"
#include "cpu.h"

typedef struct {
    const char *model;
    const char *device;
    const char *bin_dir;
    int n_prefill;
    int n_decode;
    int n_mixed;
    int port;
    const char *redis;
    const char *run_dir;
    int threads;
    int ctx;
    int start_timeout_s;
    const char *log_level;
    int metrics_port;
    int restart;
} up_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(up_conf_t, field), def, help}
static const duet_conf_opt_t up_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL, "GGUF model file (default: the cached default model)"),
    OPT("device", "DUET_DEVICE", DUET_CONF_STR, device, "cpu", "compute device of the prefill, decode and mixed instances: cpu, cuda or cuda:N"),
    OPT("bin-dir", NULL, DUET_CONF_STR, bin_dir, NULL, "where the service binaries are (default: beside this duet binary)"),
    OPT("prefill", NULL, DUET_CONF_INT, n_prefill, "1", "prefill instances"),
    OPT("decode", NULL, DUET_CONF_INT, n_decode, "1", "decode instances"),
    OPT("mixed", NULL, DUET_CONF_INT, n_mixed, "0", "mixed instances (decode that also prefills: the colocated baseline)"),
    OPT("port", "DUET_PORT", DUET_CONF_INT, port, "50051", "the gateway's gRPC port on 127.0.0.1"),
    OPT("redis", "DUET_REDIS", DUET_CONF_STR, redis, NULL, "use this Redis instead of starting one (redis://host:port)"),
    OPT("run-dir", NULL, DUET_CONF_STR, run_dir, NULL, "where logs and the Redis socket go (default: a new /tmp/duet-up-*)"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "0", "compute threads per instance; 0: the CPUs split between them"),
    OPT("ctx", NULL, DUET_CONF_INT, ctx, "2048", "context length of every instance"),
    OPT("start-timeout", NULL, DUET_CONF_INT, start_timeout_s, "60", "seconds to wait for the mesh to come up"),
    OPT("log-level", "DUET_LOG_LEVEL", DUET_CONF_STR, log_level, "info", "log level of the services"),
    OPT("metrics-port", NULL, DUET_CONF_INT, metrics_port, "0", "first Prometheus port, one per service counting up (0: the gateway port + 1, -1: none)"),
    OPT("restart", NULL, DUET_CONF_BOOL, restart, "true", "restart a process that exits after start-up (after 0.5 s, doubling up to 30 s while it keeps failing); false: stop the whole mesh"),
};
#undef OPT
#define N_OPTS ((int)(sizeof up_opts / sizeof up_opts[0]))

#define MAX_PROCS 64

#define ARGV_MAX 32

typedef struct {
    char name[32];
    pid_t pid;
    char log[1200];
    char pid_file[1200];    /* run_dir/NAME.pid: the current pid, for tests and operators */
    int metrics_port;       /* 0: none */
    /* What it takes to start it again. */
    char *argv[ARGV_MAX];   /* owned copies, NULL-ended */
    int bare, cpu_first, n_cpus;
    /* Supervision: when a dead process is due to start again, and how long it last waited. */
    int64_t started_ns, restart_at_ns, backoff_ns;
    int restarts;
} proc_t;

typedef struct {
    proc_t procs[MAX_PROCS];
    int n_procs;
    char bin_dir[1024];
    char run_dir[1024];
    int made_run_dir;
} mesh_t;

/* Starts process p (again): output appended to its log in the run directory, pinned to its cpus
 * when it has any, its pid written to its pid file. */
static int launch(mesh_t *m, proc_t *p)
{
    char path[1100];
    if (p->bare)
        snprintf(path, sizeof path, "%s", p->argv[0]);
    else
        snprintf(path, sizeof path, "%s/%s", m->bin_dir, p->argv[0]);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            close(null);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (p->n_cpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int c = p->cpu_first; c < p->cpu_first + p->n_cpus; c++)
                CPU_SET(c, &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        if (p->bare)
            execvp(path, p->argv);
        else
            execv(path, p->argv);
        fprintf(stderr, "duet up: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->started_ns = duet_clock_ns();
    FILE *f = fopen(p->pid_file, "w");
    if (f) {
        fprintf(f, "%d\n", (int)pid);
        fclose(f);
    }
    return 0;
}

/* Adds a process to the mesh and starts it: argv[0] is a name in bin_dir, or a program on PATH
 * when bare is set; pinned to cpus [cpu_first, cpu_first + n_cpus) when n_cpus > 0. */
static int spawn(mesh_t *m, const char *name, char *const argv_in[], int bare, int cpu_first, int n_cpus,
                 int metrics_port)
{
    if (m->n_procs == MAX_PROCS)
        return -1;
    proc_t *p = &m->procs[m->n_procs];
    memset(p, 0, sizeof *p);
    int n = 0;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", metrics_port);
    for (; argv_in[n] && n < ARGV_MAX - 3; n++)
        if (!(p->argv[n] = strdup(argv_in[n])))
            return -1;
    if (metrics_port > 0) {
        if (!(p->argv[n++] = strdup("--metrics-port")) || !(p->argv[n++] = strdup(port_s)))
            return -1;
    }
    p->metrics_port = metrics_port;
    p->bare = bare;
    p->cpu_first = cpu_first;
    p->n_cpus = n_cpus;
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s.log", m->run_dir, name);
    snprintf(p->pid_file, sizeof p->pid_file, "%s/%s.pid", m->run_dir, name);
    unlink(p->log);   /* a reused run directory starts with fresh logs */
    m->n_procs++;
    return launch(m, p);
}

static void free_procs(mesh_t *m)
{
    for (int i = 0; i < m->n_procs; i++)
        for (int k = 0; k < ARGV_MAX && m->procs[i].argv[k]; k++)
            free(m->procs[i].argv[k]);
}

static void print_log_tail(const proc_t *p)
{
    FILE *f = fopen(p->log, "r");
    if (!f)
        return;
    char lines[8][512];
    int n = 0;
    char line[512];
    while (fgets(line, sizeof line, f))
        snprintf(lines[n++ % 8], sizeof lines[0], "%s", line);
    fclose(f);
    fprintf(stderr, "--- last lines of %s ---\n", p->log);
    for (int i = n > 8 ? n - 8 : 0; i < n; i++)
        fputs(lines[i % 8], stderr);
}

/* Stops the processes in reverse order of start (the gateway first, Redis last). Returns how
 * many did not exit cleanly (killed after 10 s, or a non-zero status): a sanitizer's report or a
 * leak check lost to SIGKILL must not look like a clean stop. */
static int stop_all(mesh_t *m)
{
    int unclean = 0;
    for (int i = m->n_procs - 1; i >= 0; i--) {
        proc_t *p = &m->procs[i];
        if (p->pid <= 0)
            continue;
        kill(p->pid, SIGCONT);   /* a stopped process cannot act on SIGTERM */
        kill(p->pid, SIGTERM);
        int64_t until = duet_clock_ns() + 10 * 1000000000ll;
        int status = 0;
        while (waitpid(p->pid, &status, WNOHANG) == 0) {
            if (duet_clock_ns() > until) {
                fprintf(stderr, "duet up: %s did not stop in 10 s; killing it\n", p->name);
                kill(p->pid, SIGKILL);
                waitpid(p->pid, &status, 0);
                break;
            }
            usleep(10000);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "duet up: %s ended with %s %d\n", p->name, WIFEXITED(status) ? "status" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            unclean++;
        }
        p->pid = 0;
    }
    return unclean;
}

/* A process that has exited, or NULL. */
static proc_t *find_exited(mesh_t *m, int *status_p)
{
    for (int i = 0; i < m->n_procs; i++) {
        proc_t *p = &m->procs[i];
        if (p->pid > 0 && waitpid(p->pid, status_p, WNOHANG) == p->pid) {
            p->pid = 0;
            return p;
        }
    }
    return NULL;
}

static int gateway_serving(duet_rpc_client_t *client, const char *address)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    duet_rpc_opts_t opts = {.timeout_ms = 1000};
    duet_status_t st = duet_rpc_client_unary(client, address, "/grpc.health.v1.Health/Check",
                                             &req.base, &grpc__health__v1__health_check_response__descriptor,
                                             &opts, &resp);
    int ok = st == DUET_OK && ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
                                  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return ok;
}

/* Counts registered instances by role; -1 while Redis does not answer. */
static int count_roles(duet_state_t *store, int counts[DUET_ROLE_COUNT])
{
    duet_state_inst_t *insts;
    int n;
    memset(counts, 0, sizeof(int) * DUET_ROLE_COUNT);
    if (duet_state_inst_list(store, DUET_ROLE_ANY, &insts, &n) != DUET_OK)
        return -1;
    for (int i = 0; i < n; i++)
        if (insts[i].role >= 0 && insts[i].role < DUET_ROLE_COUNT)
            counts[insts[i].role]++;
    duet_state_inst_list_free(insts);
    return n;
}

static int bin_dir_of_self(char *out, size_t cap)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    if (strlen(self) >= cap)
        return -1;
    memcpy(out, self, strlen(self) + 1);
    return 0;
}

int duet_cmd_up(int argc, char **argv)
{
    up_conf_t c;
    int rc = duet_tool_parse("duet up [OPTIONS]", up_opts, N_OPTS, &c, argc, argv);
    if (rc >= 0)
        return rc;
    int n_compute = c.n_prefill + c.n_decode + c.n_mixed;
    if (c.n_prefill < 0 || c.n_decode < 0 || c.n_mixed < 0 || c.n_decode + c.n_mixed < 1 ||
        n_compute > MAX_PROCS - 4) {
        fprintf(stderr, "duet up: need at least one decode or mixed instance, and at most %d in all\n",
                MAX_PROCS - 4);
        return 2;
    }
    if (c.port < 1 || c.port > 65535) {
        fprintf(stderr, "duet up: --port must be in 1..65535\n");
        return 2;
    }
    char model_buf[PATH_MAX];
    const char *model = duet_model_resolve_path(c.model, model_buf, sizeof model_buf);
    if (access(model, R_OK) != 0) {
        fprintf(stderr, "duet up: cannot read the model %s (scripts/get-model fetches the default)\n", model);
        return 1;
    }

    static mesh_t mesh;
    mesh_t *m = &mesh;
    if (c.bin_dir) {
        snprintf(m->bin_dir, sizeof m->bin_dir, "%s", c.bin_dir);
    } else if (bin_dir_of_self(m->bin_dir, sizeof m->bin_dir) != 0) {
        fprintf(stderr, "duet up: cannot find the directory of the duet binary\n");
        return 1;
    }
    if (c.run_dir) {
        snprintf(m->run_dir, sizeof m->run_dir, "%s", c.run_dir);
        mkdir(m->run_dir, 0755);
    } else {
        snprintf(m->run_dir, sizeof m->run_dir, "/tmp/duet-up-XXXXXX");
        if (!mkdtemp(m->run_dir)) {
            fprintf(stderr, "duet up: cannot make a run directory: %s\n", strerror(errno));
            return 1;
        }
        m->made_run_dir = 1;
    }

    /* Signals are taken by sigwait below; children get an empty mask back before exec. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGCHLD);
    sigprocmask(SIG_BLOCK, &sigs, NULL);

    rc = 1;
    char redis_url[1200];
    if (c.redis) {
        snprintf(redis_url, sizeof redis_url, "%s", c.redis);
    } else {
        char sock[1100];
        snprintf(sock, sizeof sock, "%s/redis.sock", m->run_dir);
        snprintf(redis_url, sizeof redis_url, "unix://%s", sock);
        char *rargv[] = {"redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                         "--save", "", "--appendonly", "no", NULL};
        if (spawn(m, "redis", rargv, 1, 0, 0, 0) != 0)
            goto out;
    }

    /* Cores: each compute instance gets its own when there are enough to go round. */
    int n_cpu = duet_cpu_count();
    int pin = n_cpu >= n_compute;
    int per = pin ? n_cpu / n_compute : 1;
    int threads = c.threads > 0 ? c.threads : per;
    char threads_s[16], ctx_s[16], listen_s[64];
    snprintf(threads_s, sizeof threads_s, "%d", threads);
    snprintf(ctx_s, sizeof ctx_s, "%d", c.ctx);
    snprintf(listen_s, sizeof listen_s, "127.0.0.1:%d", c.port);
    char *log_level = (char *)c.log_level;

    int metrics = c.metrics_port < 0 ? 0 : c.metrics_port ? c.metrics_port : c.port + 1;
    char *sargv[] = {"duet-scheduler", "--redis", redis_url, "--log-level", log_level, NULL};
    if (spawn(m, "scheduler", sargv, 0, 0, 0, metrics ? metrics++ : 0) != 0)
        goto out;
    int cpu = 0;
    struct { const char *bin, *role; int n; } kinds[] = {
        {"duet-prefill", "prefill", c.n_prefill},
        {"duet-decode", "decode", c.n_decode},
        {"duet-decode", "mixed", c.n_mixed},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        for (int i = 0; i < kinds[k].n; i++) {
            char name[32];
            snprintf(name, sizeof name, "%s-%d", kinds[k].role, i);
            char *argv_i[24];
            int a = 0;
            argv_i[a++] = (char *)kinds[k].bin;
            argv_i[a++] = "--redis", argv_i[a++] = redis_url;
            argv_i[a++] = "--model", argv_i[a++] = (char *)model;
            argv_i[a++] = "--device", argv_i[a++] = (char *)c.device;
            argv_i[a++] = "--threads", argv_i[a++] = threads_s;
            argv_i[a++] = "--ctx", argv_i[a++] = ctx_s;
            argv_i[a++] = "--log-level", argv_i[a++] = log_level;
            if (strcmp(kinds[k].role, "mixed") == 0)
                argv_i[a++] = "--role", argv_i[a++] = "mixed";
            argv_i[a] = NULL;
            if (spawn(m, name, argv_i, 0, pin ? cpu : 0, pin ? per : 0, metrics ? metrics++ : 0) != 0)
                goto out;
            cpu += per;
        }
    }
    char *gargv[] = {"duet-gateway", "--redis", redis_url, "--listen", listen_s, "--model", (char *)model,
                     "--ctx", ctx_s, "--log-level", log_level, NULL};
    if (spawn(m, "gateway", gargv, 0, 0, 0, metrics ? metrics++ : 0) != 0)
        goto out;

    /* Wait until everyone is registered and the gateway answers its health check. */
    duet_rpc_client_t *client = NULL;
    duet_state_t *store = NULL;
    duet_rpc_client_create(&client);
    int64_t deadline = duet_clock_ns() + (int64_t)c.start_timeout_s * 1000000000;
    int up = 0;
    while (!up && duet_clock_ns() < deadline) {
        int status;
        proc_t *dead = find_exited(m, &status);
        if (dead) {
            fprintf(stderr, "duet up: %s exited during start-up (status %d)\n", dead->name,
                    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
            print_log_tail(dead);
            break;
        }
        if (!store && duet_state_connect(redis_url, 500, &store) != DUET_OK)
            store = NULL;
        int counts[DUET_ROLE_COUNT];
        if (store && count_roles(store, counts) >= 0 && counts[DUET_ROLE_SCHEDULER] >= 1 &&
            counts[DUET_ROLE_PREFILL] >= c.n_prefill && counts[DUET_ROLE_DECODE] >= c.n_decode &&
            counts[DUET_ROLE_MIXED] >= c.n_mixed && counts[DUET_ROLE_GATEWAY] >= 1 &&
            gateway_serving(client, listen_s)) {
            up = 1;
            break;
        }
        usleep(100000);
    }
    if (store)
        duet_state_close(store);
    duet_rpc_client_destroy(client);
    if (!up) {
        if (duet_clock_ns() >= deadline)
            fprintf(stderr, "duet up: the mesh did not come up within %d s; logs are in %s\n",
                    c.start_timeout_s, m->run_dir);
        goto out;
    }
    fprintf(stderr, "duet up: redis %s, scheduler, %d prefill, %d decode, %d mixed (%d thread%s each%s); logs in %s\n",
            redis_url, c.n_prefill, c.n_decode, c.n_mixed, threads, threads == 1 ? "" : "s",
            pin ? ", pinned to their own cores" : "", m->run_dir);
    for (int i = 0; i < m->n_procs; i++)
        if (m->procs[i].metrics_port)
            fprintf(stderr, "duet up: %-10s metrics at http://127.0.0.1:%d/metrics\n", m->procs[i].name,
                    m->procs[i].metrics_port);
    printf("gateway listening on %s\n", listen_s);
    fflush(stdout);

    /* Supervise: a process that exits is started again after a back-off (or, with --restart
     * false, the mesh stops). A restarted instance registers under a new id; requests it held
     * are re-placed by the gateway. */
    for (;;) {
        int64_t now = duet_clock_ns(), next = INT64_MAX;
        for (int i = 0; i < m->n_procs; i++) {
            proc_t *p = &m->procs[i];
            if (p->pid > 0 || !p->restart_at_ns)
                continue;
            if (p->restart_at_ns <= now) {
                p->restart_at_ns = 0;
                p->restarts++;
                if (launch(m, p) != 0)
                    fprintf(stderr, "duet up: cannot restart %s: %s\n", p->name, strerror(errno));
                else
                    fprintf(stderr, "duet up: %s restarted (pid %d, restart %d)\n", p->name, (int)p->pid,
                            p->restarts);
                if (p->pid <= 0)
                    p->restart_at_ns = now + p->backoff_ns;
            }
            if (p->pid <= 0 && p->restart_at_ns && p->restart_at_ns < next)
                next = p->restart_at_ns;
        }
        int sig;
        if (next == INT64_MAX) {
            sigwait(&sigs, &sig);
        } else {
            int64_t wait_ns = next - now > 0 ? next - now : 0;
            struct timespec ts = {(time_t)(wait_ns / 1000000000), (long)(wait_ns % 1000000000)};
            sig = sigtimedwait(&sigs, NULL, &ts);
            if (sig < 0)
                continue;   /* a restart is due */
        }
        if (sig != SIGCHLD) {
            fprintf(stderr, "duet up: stopping\n");
            rc = 0;
            break;
        }
        int status;
        proc_t *dead;
        int stop = 0;
        while ((dead = find_exited(m, &status))) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (!c.restart) {
                fprintf(stderr, "duet up: %s exited (status %d); stopping the mesh\n", dead->name, code);
                print_log_tail(dead);
                stop = 1;
                break;
            }
            /* One that ran a while gets a quick restart; one that keeps dying waits longer. */
            int64_t t = duet_clock_ns();
            if (t - dead->started_ns > 30 * 1000000000ll || dead->backoff_ns == 0)
                dead->backoff_ns = 500000000ll;
            else if (dead->backoff_ns < 30 * 1000000000ll)
                dead->backoff_ns *= 2;
            dead->restart_at_ns = t + dead->backoff_ns;
            fprintf(stderr, "duet up: %s exited (status %d); restarting it in %.1f s\n", dead->name, code,
                    dead->backoff_ns / 1e9);
            print_log_tail(dead);
        }
        if (stop)
            break;
    }
out:
    if (stop_all(m) > 0 && rc == 0)
        rc = 1;
    if (m->made_run_dir && rc == 0) {
        for (int i = 0; i < m->n_procs; i++) {
            unlink(m->procs[i].log);
            unlink(m->procs[i].pid_file);
        }
        char sock[1100];
        snprintf(sock, sizeof sock, "%s/redis.sock", m->run_dir);
        unlink(sock);
        rmdir(m->run_dir);
    }
    free_procs(m);
    return rc;
}
