# Chaos tests (ctest label chaos): one fault per test injected into a real `duet up` mesh while
# requests run; each asserts the outcome (tests/chaos/test_chaos.c). Serial: each starts a mesh.
if(DUET_MODEL_PATH)
  add_executable(test_chaos chaos/test_chaos.c integration/gateway_call.c integration/mesh_harness.c)
  target_include_directories(test_chaos PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit ${CMAKE_SOURCE_DIR}/tests/integration)
  target_link_libraries(test_chaos PRIVATE duet_rpc duet_state duet_proto duet_base)
  foreach(scenario decode_kill decode_stop decode_hang prefill_kill kv_timeout redis_restart)
    add_test(NAME chaos_${scenario} COMMAND test_chaos $<TARGET_FILE:duet> ${DUET_MODEL_PATH} ${scenario})
    set_tests_properties(chaos_${scenario} PROPERTIES LABELS chaos RUN_SERIAL TRUE TIMEOUT 600)
  endforeach()
endif()
