/* tests/integration/mesh_harness.h — starting and stopping a whole mesh with `duet up` for the
 * integration tests, shared so every test drives the mesh the same way. */
#ifndef DUET_TESTS_MESH_HARNESS_H
#define DUET_TESTS_MESH_HARNESS_H

#include <sys/types.h>

#include "state.h"

/* Ports a mesh takes from the one its gateway listens on: the gateway's, then one metrics port
 * per process (duet up numbers them after the gateway's). */
#define MESH_PORT_RUN 16

/* A loopback TCP port that was free a moment ago, with the MESH_PORT_RUN - 1 after it. */
int mesh_free_port(void);

/* Runs `duet up --model MODEL --port PORT --run-dir RUN_DIR --ctx 1024` plus extra (a NULL-ended
 * list of further arguments) and waits for its "gateway listening on" line. Returns its pid, or
 * -1 when it did not come up (its stdout pipe stays open so it never gets SIGPIPE). */
pid_t mesh_start(const char *duet_bin, const char *model, int port, const char *run_dir,
                 const char *const *extra);

/* SIGTERM, then up to 30 s for a clean exit. Returns 0 for exit status 0, -1 when it had to be
 * killed, else the wait status. */
int mesh_stop(pid_t pid);

/* Sends the AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer reports of every
 * process this test starts from now on (duet up, each service, duet generate, duet-load) to files
 * RUN_DIR/sanitizer.report.<program>.<pid> instead of their stderr, which duet up sends to the service
 * logs where nothing would read it. Keeps what ASAN_OPTIONS, LSAN_OPTIONS and UBSAN_OPTIONS
 * already say (ctest sets the LSan suppressions). Call it before starting anything; harmless in
 * a build without sanitizers. */
void mesh_sanitizer_setup(const char *run_dir);

/* Prints every sanitizer report file in run_dir to stderr and returns how many there are; call
 * it after the mesh has stopped (LeakSanitizer reports when a process exits). */
int mesh_sanitizer_reports(const char *run_dir);

/* Free KV blocks summed over the decode and mixed instances registered in store, as their last
 * heartbeats report them; -1 while Redis does not answer. */
int mesh_decode_free_blocks(duet_state_t *store);

/* GET /metrics on 127.0.0.1:port: the body (malloc'd), or NULL when the service does not answer
 * 200. */
char *mesh_metrics_get(int port);
/* The value of one sample of a Prometheus text body, named with its labels exactly as the service
 * writes them (duet_kv_verify_total{result="ok"}); -1 when it is not there. */
double mesh_metric_value(const char *text, const char *sample);

#endif
