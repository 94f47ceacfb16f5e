# The CUDA backend's tests, included from tests/CMakeLists.txt.
#   emu: the kernels of kernels/cuda run on the host by kernels/emu, against the CPU reference;
#        test_emu_race_* show that ThreadSanitizer catches a kernel missing a barrier.
#   gpu: the same op and forward-pass tests against the real backend; exit 77 (shown as skipped,
#        never as passed) without a GPU or when the build has no nvcc.
duet_test(test_emu_ops LABELS emu SOURCES emu/test_cuda_ops.c LIBS duet_cuda_emu)
duet_test(test_emu_forward LABELS emu SOURCES emu/test_cuda_forward.c LIBS duet_cuda_emu
          ARGS $<TARGET_FILE:duet>)
target_include_directories(test_emu_forward PRIVATE ${CMAKE_SOURCE_DIR}/lib/engine)

if(DUET_HAVE_CUDA)
  duet_test(test_gpu_ops LABELS gpu SOURCES emu/test_cuda_ops.c LIBS duet_cuda)
  duet_test(test_gpu_forward LABELS gpu SOURCES emu/test_cuda_forward.c LIBS duet_cuda
            ARGS $<TARGET_FILE:duet>)
else()
  duet_test(test_gpu_ops LABELS gpu SOURCES emu/test_cuda_ops.c)
  duet_test(test_gpu_forward LABELS gpu SOURCES emu/test_cuda_forward.c)
  target_compile_definitions(test_gpu_ops PRIVATE DUET_TEST_NO_CUDA)
  target_compile_definitions(test_gpu_forward PRIVATE DUET_TEST_NO_CUDA)
endif()
target_include_directories(test_gpu_forward PRIVATE ${CMAKE_SOURCE_DIR}/lib/engine)
# The sampling tests compare with the host sampler (lib/engine/sampler.h).
target_include_directories(test_emu_ops PRIVATE ${CMAKE_SOURCE_DIR}/lib/engine)
target_include_directories(test_gpu_ops PRIVATE ${CMAKE_SOURCE_DIR}/lib/engine)
set_tests_properties(test_gpu_ops test_gpu_forward PROPERTIES SKIP_RETURN_CODE 77)

# The mesh with --device cuda (duet up, real Redis, gRPC and UCX; decode checks every received
# prompt KV against the prefill's checksum): on the emulated services of emu-bin/ here, on the real
# ones with a GPU. Serial, like the other meshes.
set(_mesh_device_sources integration/test_mesh_device.c integration/mesh_harness.c integration/gateway_call.c)
duet_test(test_mesh_emu LABELS emu SOURCES ${_mesh_device_sources} LIBS duet_rpc duet_state duet_proto
          ARGS $<TARGET_FILE:duet> emu $<TARGET_FILE_DIR:duet-decode-emu>)
add_dependencies(test_mesh_emu duet-decode-emu duet-prefill-emu duet-gateway duet-scheduler)
# The same with prefill sending each prompt's KV after its last layer (whole blocks) instead of
# layer by layer: the other staging path.
add_test(NAME test_mesh_emu_prompt COMMAND test_mesh_emu $<TARGET_FILE:duet> emu $<TARGET_FILE_DIR:duet-decode-emu>)
set_tests_properties(test_mesh_emu_prompt PROPERTIES LABELS emu ENVIRONMENT "DUET_KV_SEND=prompt")
duet_test(test_mesh_gpu LABELS gpu SOURCES ${_mesh_device_sources} LIBS duet_rpc duet_state duet_proto
          ARGS $<TARGET_FILE:duet> gpu)
add_dependencies(test_mesh_gpu duet-decode duet-prefill duet-gateway duet-scheduler)
if(NOT DUET_HAVE_CUDA)
  target_compile_definitions(test_mesh_gpu PRIVATE DUET_TEST_NO_CUDA)
endif()
set_tests_properties(test_mesh_emu test_mesh_emu_prompt test_mesh_gpu PROPERTIES RUN_SERIAL TRUE TIMEOUT 900)
set_tests_properties(test_mesh_gpu PROPERTIES SKIP_RETURN_CODE 77)

# The race catch builds its own ThreadSanitizer binary (emulator + test kernels), so it runs in
# every build; not next to ASan/UBSan (DUET_SANITIZE), whose runtime cannot share a process.
if(NOT DUET_SANITIZE OR DUET_SANITIZE STREQUAL "thread")
  set(_race_src ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_emu_race.cu)
  set_source_files_properties(${_race_src} PROPERTIES LANGUAGE CXX COMPILE_OPTIONS "-xc++")
  add_executable(test_emu_race_tsan ${_race_src} ${CMAKE_SOURCE_DIR}/kernels/emu/emu.cpp
                 ${CMAKE_SOURCE_DIR}/kernels/emu/emu_runtime.cpp)
  target_include_directories(test_emu_race_tsan PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
  target_compile_features(test_emu_race_tsan PRIVATE cxx_std_17)
  target_compile_options(test_emu_race_tsan PRIVATE -fsanitize=thread -g -ffp-contract=off)
  target_link_options(test_emu_race_tsan PRIVATE -fsanitize=thread)
  target_link_libraries(test_emu_race_tsan PRIVATE Threads::Threads)
  add_test(NAME test_emu_race_caught COMMAND test_emu_race_tsan racy)
  set_tests_properties(test_emu_race_caught PROPERTIES LABELS "emu;tsan" TIMEOUT 300
                       ENVIRONMENT "TSAN_OPTIONS=halt_on_error=0"
                       PASS_REGULAR_EXPRESSION "WARNING: ThreadSanitizer: data race")
  add_test(NAME test_emu_race_clean COMMAND test_emu_race_tsan fixed)
  set_tests_properties(test_emu_race_clean PROPERTIES LABELS "emu;tsan" TIMEOUT 300)
endif()
