# tests/loadtest.cmake — duet-load's unit test, included from tests/CMakeLists.txt: its math, trace
# parsing, arrivals and sweep on known data, and whole runs against an in-process fake gateway.
duet_test(test_loadtest LABELS unit
          SOURCES ../loadtest/test_loadtest.c ../loadtest/workload.c ../loadtest/trace.c
                  ../loadtest/stats.c ../loadtest/sweep.c ../loadtest/client.c ../loadtest/run.c
                  ../loadtest/report.c
          LIBS duet_rpc duet_proto m)
