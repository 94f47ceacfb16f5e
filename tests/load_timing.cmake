# duet-load's per-request timings against the mesh's Redis records (ctest label integration):
# `duet up` with one prefill and one decode instance, 20 requests from duet-load, every record DONE
# and its TTFT and E2E within a stated clock tolerance of the client's. Serial: it starts a whole
# mesh on this machine's cores. Included from tests/CMakeLists.txt after integration.cmake.
if(DUET_MODEL_PATH)
  duet_test(test_load_timing LABELS integration SOURCES integration/test_load_timing.c integration/mesh_harness.c
            ARGS $<TARGET_FILE:duet> $<TARGET_FILE:duet-load> ${DUET_MODEL_PATH} LIBS duet_state)
  set_tests_properties(test_load_timing PROPERTIES RUN_SERIAL TRUE TIMEOUT 600)
endif()
