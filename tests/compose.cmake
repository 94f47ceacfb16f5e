# tests/compose.cmake — the mesh in Docker (ctest label compose), included from
# tests/CMakeLists.txt: tests/compose/run.sh builds the CPU image (docker/Dockerfile), starts
# compose.yaml with the host's model mounted, checks a request and a short load through the
# published gateway with this build's duet and duet-load, scales decode to 2 and checks that both
# serve, then takes it all down. It starts (and stops) its own dockerd when no engine answers, and
# is reported as skipped (exit 77) where no Docker engine can be had.
if(DUET_MODEL_PATH)
  add_test(NAME test_compose
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/compose/run.sh ${CMAKE_SOURCE_DIR}
                   $<TARGET_FILE:duet> $<TARGET_FILE:duet-load> ${DUET_MODEL_PATH})
  set_tests_properties(test_compose PROPERTIES LABELS compose RUN_SERIAL TRUE TIMEOUT 1200
                       SKIP_RETURN_CODE 77)
endif()
