/* tests/integration/mesh_harness.c — `duet up` as a child process for the integration tests. */
#include "mesh_harness.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"

int mesh_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
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
