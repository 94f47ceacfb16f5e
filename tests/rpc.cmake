# tests/rpc.cmake — lib/rpc's tests, included from tests/CMakeLists.txt (needs proto/ and lib/rpc).
duet_test(test_rpc LABELS unit SOURCES unit/test_rpc.c LIBS duet_rpc)
duet_test(test_rpc_tls LABELS unit SOURCES unit/test_rpc_tls.c LIBS duet_rpc)
set_tests_properties(test_rpc_tls PROPERTIES SKIP_RETURN_CODE 77)
