# tests/gateway.cmake — unit tests of the gateway's own pieces (services/gateway), included from
# tests/CMakeLists.txt.
duet_test(test_apikeys   LABELS unit SOURCES unit/test_apikeys.c   LIBS duet_gateway_guard
          ARGS $<TARGET_FILE:duet>)
duet_test(test_ratelimit LABELS unit SOURCES unit/test_ratelimit.c LIBS duet_gateway_guard)
duet_test(test_gateway_text LABELS unit SOURCES unit/test_gateway_text.c
          ${CMAKE_SOURCE_DIR}/services/gateway/text.c)
target_include_directories(test_gateway_text PRIVATE ${CMAKE_SOURCE_DIR}/services/gateway)
# A real duet-gateway with a real redis-server and a stand-in scheduler: keys, limits, retry hints.
find_program(DUET_REDIS_SERVER redis-server)
if(DUET_MODEL_PATH AND DUET_REDIS_SERVER)
  duet_test(test_gateway_limits LABELS integration SOURCES integration/test_gateway_limits.c
                                                   integration/mesh_harness.c
            ARGS $<TARGET_FILE:duet-gateway> ${DUET_MODEL_PATH} LIBS duet_rpc duet_proto duet_state)
endif()
