/* tests/unit/test_kvx.c — two real processes over UCX: a decode process owns a kvx pool, a prefill
 * process puts KV slices into it layer by layer and by whole blocks; plus a killed peer and a
 * 64 MiB throughput figure. Run it under UCX_TLS=tcp and shared memory (see tests/kvx.cmake);
 * DUET_TEST_KVX_ERR_MODE=peer runs both processes with the cross-host err mode. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "kvx.h"

/* A small model's KV: 4 layers x 2 KV heads x 64 dims, f16: a K slice is 4 KiB, a block 32 KiB. */
enum { N_LAYER = 4, N_KV_HEAD = 2, HEAD_DIM = 64 };
/* 2048 blocks of 32 KiB: the 64 MiB the throughput runs move. */
enum { N_BLOCKS = 2048 };
#define BLOCK_ELEMS ((size_t)N_LAYER * 2 * N_KV_HEAD * DUET_KV_BLOCK_TOKENS * HEAD_DIM)
#define POOL_BYTES ((size_t)N_BLOCKS * BLOCK_ELEMS * sizeof(uint16_t))
#define FLUSH_TIMEOUT_MS 10000

/* What the correctness run sends: layer -1 is every layer. Destination blocks are scattered. */
typedef struct {
    uint32_t src, dst;
    int layer;
} move_t;
static const move_t moves[] = {
    {0, 17, -1}, {1, 3, -1}, {2, 29, -1}, {3, 8, -1}, {4, 11, -1}, /* layer by layer */
    {5, 20, -1}, {6, 21, -1}, {7, 22, -1},                         /* whole blocks, one run */
    {9, 2, -1},                                                     /* whole block, alone */
    {10, 30, 1},                                                    /* only layer 1 */
};
enum { N_MOVES = sizeof(moves) / sizeof(moves[0]) };

/* The prefill pool's content: differs per block, layer and element, and is never zero. */
static uint16_t pattern(uint32_t block, size_t elem_in_block)
{
    uint32_t x = block * 2654435761u ^ (uint32_t)elem_in_block * 40503u;
    return (uint16_t)(x % 65535u + 1);
}

static duet_kv_pool_view_t view_of(void *base)
{
    return (duet_kv_pool_view_t){
        .base = base, .n_blocks = N_BLOCKS, .n_layer = N_LAYER, .n_kv_head = N_KV_HEAD,
        .head_dim = HEAD_DIM};
}

static duet_kvx_err_mode_t err_mode_from_env(void)
{
    const char *mode = getenv("DUET_TEST_KVX_ERR_MODE");
    return mode && strcmp(mode, "peer") == 0 ? DUET_KVX_ERR_PEER : DUET_KVX_ERR_NONE;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A blob on the wire: its length, then its bytes. */
static int send_blob(int fd, const void *bytes, uint64_t len)
{
    return write_full(fd, &len, sizeof(len)) || write_full(fd, bytes, len) ? -1 : 0;
}

static void *recv_blob(int fd, uint64_t *len_p)
{
    uint64_t len;
    if (read_full(fd, &len, sizeof(len)) || len > (1u << 20)) {
        return NULL;
    }
    void *bytes = malloc(len ? len : 1);
    if (bytes && read_full(fd, bytes, len)) {
        free(bytes);
        return NULL;
    }
    *len_p = len;
    return bytes;
}

/* ---- decode process ---- */

/* Mismatching elements of the pool against what `moves` should have left in it. */
static uint32_t decode_verify(const duet_kvx_pool_t *pool)
{
    duet_kv_pool_view_t view = view_of(duet_kvx_pool_base(pool));
    size_t pair = 2 * duet_kv_slice_elems(&view);
    uint32_t bad = 0;
    for (uint32_t b = 0; b < N_BLOCKS; b++) {
        const move_t *mv = NULL;
        for (int i = 0; i < N_MOVES; i++) {
            if (moves[i].dst == b) {
                mv = &moves[i];
            }
        }
        const uint16_t *blk = duet_kv_slice(&view, (int)b, 0, 0);
        for (size_t e = 0; e < BLOCK_ELEMS; e++) {
            int layer = (int)(e / pair);
            bool written = mv && (mv->layer < 0 || mv->layer == layer);
            uint16_t want = written ? pattern(mv->src, e) : 0;
            if (blk[e] != want) {
                if (bad < 5) {
                    fprintf(stderr, "decode: block %u elem %zu: %u, want %u\n", b, e, blk[e], want);
                }
                bad++;
            }
        }
    }
    return bad;
}

/* Publishes its pool on `sock`, then serves commands while its event loop progresses the worker:
 * 'V' verify (answers the mismatch count), 'Q' or EOF quit. */
static int decode_main(int sock)
{
    duet_kvx_conf_t conf = {.err_mode = err_mode_from_env(), .name = "test-decode"};
    duet_kvx_t *kvx;
    duet_kvx_pool_t *pool;
    if (duet_kvx_create(&conf, &kvx) != DUET_OK) {
        return 2;
    }
    if (duet_kvx_pool_create(kvx, POOL_BYTES, &pool) != DUET_OK) {
        duet_kvx_destroy(kvx);
        return 2;
    }
    duet_kvx_remote_t remote;
    duet_kvx_pool_remote(kvx, pool, &remote);
    uint64_t base = remote.base, size = remote.size;
    if (send_blob(sock, remote.worker_addr, remote.worker_addr_len) ||
        send_blob(sock, remote.rkey, remote.rkey_len) || write_full(sock, &base, sizeof(base)) ||
        write_full(sock, &size, sizeof(size))) {
        return 2;
    }

    int rc = 0;
    for (bool running = true; running;) {
        while (duet_kvx_progress(kvx) > 0) {
        }
        bool armed;
        if (duet_kvx_arm(kvx, &armed) != DUET_OK) {
            rc = 2;
            break;
        }
        if (!armed) {
            continue;
        }
        struct pollfd fds[2] = {{.fd = duet_kvx_event_fd(kvx), .events = POLLIN},
                                {.fd = sock, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR) {
            rc = 2;
            break;
        }
        if (fds[1].revents) {
            char cmd;
            if (read_full(sock, &cmd, 1) || cmd == 'Q') {
                running = false;
            } else if (cmd == 'V') {
                uint32_t bad = decode_verify(pool);
                if (write_full(sock, &bad, sizeof(bad))) {
                    running = false;
                }
            }
        }
    }
    duet_kvx_pool_destroy(pool);
    duet_kvx_destroy(kvx);
    return rc;
}

static pid_t decode_pid, victim_pid;
static int decode_sock = -1, victim_sock = -1;

/* Forks a decode process; *sock_p is the prefill end of its socket. */
static pid_t decode_spawn(int *sock_p)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        if (decode_sock >= 0) {
            close(decode_sock); /* the victim must not keep the first decode's socket open */
        }
        int rc = decode_main(sv[1]);
        close(sv[1]);
        exit(rc);
    }
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return -1;
    }
    *sock_p = sv[0];
    return pid;
}

/* Reads what decode_main published and connects to it. */
static duet_status_t peer_from_socket(duet_kvx_t *kvx, int sock, duet_kvx_peer_t **peer_p)
{
    duet_kvx_remote_t remote = {0};
    uint64_t addr_len = 0, rkey_len = 0, base = 0, size = 0;
    void *addr = recv_blob(sock, &addr_len);
    void *rkey = recv_blob(sock, &rkey_len);
    duet_status_t status = DUET_ERR_IO;
    if (addr && rkey && !read_full(sock, &base, sizeof(base)) &&
        !read_full(sock, &size, sizeof(size))) {
        remote = (duet_kvx_remote_t){.worker_addr = addr, .worker_addr_len = addr_len,
                                     .rkey = rkey, .rkey_len = rkey_len, .base = base,
                                     .size = size};
        status = duet_kvx_peer_connect(kvx, &remote, peer_p);
    }
    free(addr);
    free(rkey);
    return status;
}

static int wait_child(pid_t pid)
{
    int ws;
    if (waitpid(pid, &ws, 0) != pid) {
        return -1;
    }
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

/* ---- prefill process: the tests ---- */

static duet_kvx_t *kvx;
static duet_kvx_peer_t *peer;
static uint16_t *src_mem; /* the prefill pool, malloc'd like a CPU backend's */
static duet_kvx_pool_t *src_pool;

static void test_pool_create_zeroed_and_published(void)
{
    duet_kvx_pool_t *pool;
    CHECK_EQ_INT(duet_kvx_pool_create(kvx, 1 << 20, &pool), DUET_OK);
    const uint8_t *p = duet_kvx_pool_base(pool);
    CHECK(p != NULL);
    CHECK_EQ_INT(duet_kvx_pool_size(pool), 1 << 20);
    size_t nonzero = 0;
    for (size_t i = 0; i < (1 << 20); i++) {
        nonzero += p[i] != 0;
    }
    CHECK_EQ_INT(nonzero, 0);
    const void *rkey;
    size_t rkey_len;
    duet_kvx_pool_rkey(pool, &rkey, &rkey_len);
    CHECK(rkey != NULL && rkey_len > 0);
    duet_kvx_pool_destroy(pool);

    const void *addr;
    size_t addr_len;
    duet_kvx_worker_address(kvx, &addr, &addr_len);
    CHECK(addr != NULL && addr_len > 0);
    CHECK(duet_kvx_event_fd(kvx) >= 0);
}

/* Whether UCX moves CUDA memory is asked of the library at run time; where it cannot (the
 * distribution's UCX has no CUDA transports), registering a "GPU pool" is refused with a status,
 * so a service falls back to the host mirror instead of crashing in UCX. */
static void test_cuda_memory_detected_at_run_time(void)
{
    bool cuda = duet_kvx_cuda_memory(kvx);
    fprintf(stderr, "  this UCX %s CUDA memory\n", cuda ? "moves" : "does not move");
    if (!cuda) {
        duet_kvx_pool_t *pool = NULL;
        CHECK_EQ_INT(duet_kvx_pool_register_cuda(kvx, src_mem, 4096, &pool), DUET_ERR_UNSUPPORTED);
        CHECK(pool == NULL);
    }
    CHECK_EQ_INT(duet_kvx_pool_register_cuda(kvx, NULL, 4096, &(duet_kvx_pool_t *){NULL}), DUET_ERR_INVALID);
}

static void test_put_scattered_layers_and_blocks(void)
{
    duet_kv_pool_view_t src = view_of(src_mem);
    for (uint32_t b = 0; b < N_BLOCKS; b++) {
        uint16_t *blk = duet_kv_slice(&src, (int)b, 0, 0);
        for (size_t e = 0; e < BLOCK_ELEMS; e++) {
            blk[e] = pattern(b, e);
        }
    }
    CHECK_EQ_INT(peer_from_socket(kvx, decode_sock, &peer), DUET_OK);
    if (!peer) {
        return;
    }
    uint32_t sb[5], db[5];
    for (int i = 0; i < 5; i++) {
        sb[i] = moves[i].src;
        db[i] = moves[i].dst;
    }
    /* Layers 0 and 1 from unregistered memory: UCX registers (or copies) on the fly. */
    for (int layer = 0; layer < 2; layer++) {
        CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, layer, sb, db, 5), DUET_OK);
    }
    CHECK_EQ_INT(duet_kvx_flush(peer, FLUSH_TIMEOUT_MS), DUET_OK);
    /* The rest from the same memory registered once, as a prefill instance does at start. */
    CHECK_EQ_INT(duet_kvx_pool_register(kvx, src_mem, POOL_BYTES, &src_pool), DUET_OK);
    for (int layer = 2; layer < N_LAYER; layer++) {
        CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, layer, sb, db, 5), DUET_OK);
        CHECK_EQ_INT(duet_kvx_flush(peer, FLUSH_TIMEOUT_MS), DUET_OK);
    }
    uint32_t bsb[] = {moves[5].src, moves[6].src, moves[7].src, moves[8].src};
    uint32_t bdb[] = {moves[5].dst, moves[6].dst, moves[7].dst, moves[8].dst};
    CHECK_EQ_INT(duet_kvx_put_blocks(peer, &src, bsb, bdb, 4), DUET_OK);
    uint32_t lsb = moves[9].src, ldb = moves[9].dst;
    CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, moves[9].layer, &lsb, &ldb, 1), DUET_OK);
    CHECK_EQ_INT(duet_kvx_flush(peer, FLUSH_TIMEOUT_MS), DUET_OK);

    /* Refused locally, nothing posted: a destination past the remote pool, a bad layer. */
    uint32_t past = N_BLOCKS;
    CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, 0, &lsb, &past, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, N_LAYER, &lsb, &ldb, 1), DUET_ERR_INVALID);

    duet_kvx_peer_stats_t stats;
    duet_kvx_peer_stats(peer, &stats);
    size_t pair_bytes = 2 * duet_kv_slice_elems(&src) * sizeof(uint16_t);
    size_t block_bytes = BLOCK_ELEMS * sizeof(uint16_t);
    uint64_t want = 5 * N_LAYER * pair_bytes + 4 * block_bytes + pair_bytes;
    CHECK_EQ_INT(stats.bytes_posted, want);
    CHECK_EQ_INT(stats.bytes_completed, want);
    CHECK_EQ_INT(stats.puts, 5 * N_LAYER + 2 + 1); /* blocks 20..22 are one run */
    CHECK_EQ_INT(stats.flushes_failed, 0);

    /* Every byte of the written slices arrived, every other byte of the pool is still zero. */
    uint32_t bad = UINT32_MAX;
    CHECK(write_full(decode_sock, "V", 1) == 0 && read_full(decode_sock, &bad, sizeof(bad)) == 0);
    CHECK_EQ_INT(bad, 0);
}

static double timed_transfer(bool layerwise, const uint32_t *sb, const uint32_t *db)
{
    duet_kv_pool_view_t src = view_of(src_mem);
    int64_t t0 = duet_clock_ns();
    if (layerwise) {
        for (int layer = 0; layer < N_LAYER; layer++) {
            CHECK_EQ_INT(duet_kvx_put_layer(peer, &src, layer, sb, db, N_BLOCKS), DUET_OK);
        }
    } else {
        CHECK_EQ_INT(duet_kvx_put_blocks(peer, &src, sb, db, N_BLOCKS), DUET_OK);
    }
    CHECK_EQ_INT(duet_kvx_flush(peer, 60000), DUET_OK);
    double s = (double)(duet_clock_ns() - t0) / 1e9;
    return (double)POOL_BYTES / s / 1e9;
}

static void test_throughput_64mib(void)
{
    if (!peer) {
        CHECK(peer != NULL);
        return;
    }
    /* Reversed destinations, so whole blocks go one put (32 KiB) each, not one run. */
    static uint32_t sb[N_BLOCKS], db[N_BLOCKS];
    for (uint32_t b = 0; b < N_BLOCKS; b++) {
        sb[b] = b;
        db[b] = N_BLOCKS - 1 - b;
    }
    const char *tls = getenv("UCX_TLS");
    for (int round = 0; round < 2; round++) { /* the first round warms the connection up */
        double layer_gbs = timed_transfer(true, sb, db);
        double block_gbs = timed_transfer(false, sb, db);
        double run_gbs = timed_transfer(false, sb, sb); /* consecutive: one 64 MiB put */
        if (round == 1) {
            printf("kvx throughput (UCX_TLS=%s), 64 MiB: layer-wise %d x 8 KiB puts %.2f GB/s, "
                   "block-wise %d x 32 KiB puts %.2f GB/s, one 64 MiB put %.2f GB/s\n",
                   tls ? tls : "default", N_BLOCKS * N_LAYER, layer_gbs, N_BLOCKS, block_gbs,
                   run_gbs);
        }
    }
}

/* Whether UCX may reach a decode process on this host over shared memory: UCX_TLS unset, or
 * naming a shared-memory transport, with err mode NONE (PEER turns shared memory off). */
static bool over_shared_memory(void)
{
    if (err_mode_from_env() == DUET_KVX_ERR_PEER) {
        return false;
    }
    const char *tls = getenv("UCX_TLS");
    return !tls || strstr(tls, "sm") || strstr(tls, "posix") || strstr(tls, "sysv") ||
           strstr(tls, "cma") || strstr(tls, "all");
}

static void test_flush_to_killed_peer_fails_in_time(void)
{
    duet_kvx_peer_t *vp = NULL;
    CHECK_EQ_INT(peer_from_socket(kvx, victim_sock, &vp), DUET_OK);
    if (!vp) {
        return;
    }
    duet_kv_pool_view_t src = view_of(src_mem);
    uint32_t b = 0;
    CHECK_EQ_INT(duet_kvx_put_blocks(vp, &src, &b, &b, 1), DUET_OK);
    CHECK_EQ_INT(duet_kvx_flush(vp, FLUSH_TIMEOUT_MS), DUET_OK);

    kill(victim_pid, SIGKILL);
    CHECK_EQ_INT(wait_child(victim_pid), 128 + SIGKILL);
    victim_pid = 0;

    int timeout_ms = 3000;
    int64_t t0 = duet_clock_ns();
    duet_status_t st = DUET_OK;
    /* A few rounds: over TCP the first put may still land in the socket buffer. */
    for (int i = 0; i < 4 && st == DUET_OK; i++) {
        st = duet_kvx_put_blocks(vp, &src, &b, &b, 1);
        if (st == DUET_OK) {
            st = duet_kvx_flush(vp, timeout_ms);
        }
    }
    double waited_ms = (double)(duet_clock_ns() - t0) / 1e6;
    printf("kvx killed peer: %s after %.0f ms\n", duet_status_str(st), waited_ms);
    CHECK_MSG(waited_ms < 4 * timeout_ms + 1000, "waited %.0f ms", waited_ms);
    if (over_shared_memory()) {
        /* Shared memory with err mode NONE: the put is a memcpy into the dead process's segment,
         * which stays mapped here, so UCX completes it. Nothing in UCX 1.13 can tell (PEER mode
         * turns shared memory off); decode liveness comes from Redis heartbeats instead. What
         * matters here is that it does not hang. */
        CHECK_MSG(st == DUET_OK || st == DUET_ERR_DEADLINE || st == DUET_ERR_UNAVAILABLE,
                  "status %d", st);
    } else {
        CHECK_MSG(st == DUET_ERR_DEADLINE || st == DUET_ERR_UNAVAILABLE, "status %d", st);
        /* Once failed, nothing more is posted. */
        CHECK_EQ_INT(duet_kvx_put_blocks(vp, &src, &b, &b, 1), DUET_ERR_UNAVAILABLE);
    }
    duet_kvx_peer_destroy(vp, 1000);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* a dead decode process shows up as an error, not a signal */
    /* Both decode processes are forked before this process touches UCX. */
    decode_pid = decode_spawn(&decode_sock);
    victim_pid = decode_spawn(&victim_sock);
    if (decode_pid < 0 || victim_pid < 0) {
        fprintf(stderr, "fork failed\n");
        return 1;
    }
    duet_kvx_conf_t conf = {.err_mode = err_mode_from_env(), .name = "test-prefill"};
    src_mem = calloc(1, POOL_BYTES);
    CHECK_EQ_INT(duet_kvx_create(&conf, &kvx), DUET_OK);
    if (kvx && src_mem) {
        RUN_TEST(test_pool_create_zeroed_and_published);
        RUN_TEST(test_cuda_memory_detected_at_run_time);
        RUN_TEST(test_put_scattered_layers_and_blocks);
        RUN_TEST(test_throughput_64mib);
        RUN_TEST(test_flush_to_killed_peer_fails_in_time);
    }
    fflush(stdout);

    duet_kvx_peer_destroy(peer, 5000);
    if (decode_sock >= 0) {
        write_full(decode_sock, "Q", 1);
    }
    CHECK_EQ_INT(wait_child(decode_pid), 0);
    if (victim_pid > 0) {
        kill(victim_pid, SIGKILL);
        wait_child(victim_pid);
    }
    duet_kvx_pool_destroy(src_pool);
    duet_kvx_destroy(kvx);
    free(src_mem);
    close(decode_sock);
    close(victim_sock);
    return check_report();
}
