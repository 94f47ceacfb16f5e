# tests/rpc.cmake — lib/rpc's tests, included from tests/CMakeLists.txt (needs proto/ and lib/rpc).
duet_test(test_rpc LABELS unit SOURCES unit/test_rpc.c LIBS duet_rpc)
