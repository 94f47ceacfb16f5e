# The fuzz targets' inputs replayed in every build (label unit), without libFuzzer or clang: each
# target's harness (tests/fuzz/fuzz_<name>.c, invariants included) linked with tests/fuzz/replay.c
# runs over its committed seeds and over tests/fuzz/regressions/<name>/, the inputs of past
# findings, so a fixed bug stays fixed in CI's release and sanitizer builds.
# duet_fuzz_replay(<name> SOURCES <sources the harness needs>... [INCLUDES ...] [LIBS ...] [MODEL])
function(duet_fuzz_replay name)
  cmake_parse_arguments(R "MODEL" "" "SOURCES;INCLUDES;LIBS" ${ARGN})
  if(R_MODEL AND NOT DUET_MODEL_PATH)
    return()
  endif()
  set(dirs ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${name})
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regressions/${name})
    list(APPEND dirs ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/regressions/${name})
  endif()
  add_executable(replay_${name} fuzz/replay.c fuzz/fuzz_${name}.c ${R_SOURCES})
  target_include_directories(replay_${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz ${CMAKE_SOURCE_DIR}/lib/state
                             ${R_INCLUDES})
  target_link_libraries(replay_${name} PRIVATE ${R_LIBS} duet_base)
  add_test(NAME test_fuzz_replay_${name} COMMAND replay_${name} ${dirs})
  set_tests_properties(test_fuzz_replay_${name} PROPERTIES LABELS unit TIMEOUT 300)
  if(R_MODEL)
    set_tests_properties(test_fuzz_replay_${name} PROPERTIES ENVIRONMENT "DUET_FUZZ_MODEL=${DUET_MODEL_PATH}")
  endif()
endfunction()

set(_svc ${CMAKE_SOURCE_DIR}/services)
duet_fuzz_replay(tokenizer MODEL SOURCES fuzz/fuzz_model.c LIBS duet_engine)
duet_fuzz_replay(gateway MODEL
  SOURCES fuzz/fuzz_model.c ${_svc}/gateway/request.c ${_svc}/decode/decode_request.c
  INCLUDES ${_svc}/gateway ${_svc}/decode LIBS duet_engine duet_proto)
duet_fuzz_replay(decode_request SOURCES ${_svc}/decode/decode_request.c
  INCLUDES ${_svc}/decode LIBS duet_engine duet_proto)
duet_fuzz_replay(prefill_request SOURCES ${_svc}/prefill/prefill_request.c
  INCLUDES ${_svc}/prefill LIBS duet_engine duet_proto)
duet_fuzz_replay(route SOURCES ${_svc}/scheduler/placement.c INCLUDES ${_svc}/scheduler LIBS duet_proto)
