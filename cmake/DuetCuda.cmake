# The CUDA backend (kernels/cuda) and its host emulator (kernels/emu).
# DUET_CUDA=AUTO|ON|OFF: find nvcc (also in /usr/local/cuda/bin, which is not on PATH by default).
# With nvcc, kernels/cuda is built for sm_80 and sm_90 into duet_cuda (cudart + cuBLAS). Without
# it, duet_cuda is skipped; the emulator, which runs the same kernel sources on the host, is built
# either way (it needs only a C++ compiler) so the kernels are tested on every machine.
set(DUET_HAVE_CUDA OFF)
if(NOT DUET_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DUET_HAVE_CUDA ON)
  elseif(DUET_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DUET_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()

# enable_language must run at the top level: tests link these libraries from other directories.
enable_language(CXX)
if(DUET_HAVE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "duet: CUDA backend built with ${CMAKE_CUDA_COMPILER} "
                 "(CUDA ${CUDAToolkit_VERSION}) for sm_${CMAKE_CUDA_ARCHITECTURES}")
else()
  message(STATUS "duet: no nvcc (or DUET_CUDA=OFF), CUDA backend skipped; its kernels are still "
                 "tested under the host emulator")
endif()

add_subdirectory(${CMAKE_CURRENT_LIST_DIR}/../kernels/emu ${CMAKE_BINARY_DIR}/kernels/emu)
if(DUET_HAVE_CUDA)
  add_subdirectory(${CMAKE_CURRENT_LIST_DIR}/../kernels/cuda ${CMAKE_BINARY_DIR}/kernels/cuda)
endif()
