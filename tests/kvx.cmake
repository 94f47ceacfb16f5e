# lib/kvx tests, included from tests/CMakeLists.txt. test_kvx forks a decode process and puts KV
# slices into its pool; it runs with UCX's own transport choice (shared memory on one host), over
# TCP only, and over shared memory only ("sm": posix and sysv shm for the puts, cma beside them).
# Under -fsanitize=address,undefined UCX 1.13 leaks nothing at exit, so no LSan suppression is kept.
duet_test(test_kvx LABELS integration SOURCES unit/test_kvx.c LIBS duet_kvx)

add_test(NAME test_kvx_tcp COMMAND test_kvx)
set_tests_properties(test_kvx_tcp PROPERTIES LABELS integration TIMEOUT 600 ENVIRONMENT "UCX_TLS=tcp")
add_test(NAME test_kvx_sm COMMAND test_kvx)
set_tests_properties(test_kvx_sm PROPERTIES LABELS integration TIMEOUT 600 ENVIRONMENT "UCX_TLS=sm")
# The cross-host setting: err mode PEER (UCX 1.13 then runs everything over TCP).
add_test(NAME test_kvx_peer COMMAND test_kvx)
set_tests_properties(test_kvx_peer PROPERTIES LABELS integration TIMEOUT 600
                     ENVIRONMENT "DUET_TEST_KVX_ERR_MODE=peer")
