# Compiler flags shared by every duet target: warnings, sanitizers, and the ISA flags that only
# the files holding vectorized kernels get (the rest stays runnable on any x86-64 CPU).
add_compile_options(-Wall -Wextra -Wshadow -Wno-unused-parameter -fno-strict-aliasing)
if(DUET_WERROR)
  add_compile_options(-Werror)
endif()
add_compile_definitions(_GNU_SOURCE)

if(DUET_SANITIZE)
  string(REPLACE "," ";" _duet_sanitizers "${DUET_SANITIZE}")
  foreach(_s IN LISTS _duet_sanitizers)
    if(NOT _s MATCHES "^(address|undefined|thread|leak)$")
      message(FATAL_ERROR "DUET_SANITIZE: unknown sanitizer '${_s}'")
    endif()
  endforeach()
  add_compile_options(-fsanitize=${DUET_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${DUET_SANITIZE})
endif()

# Flags for the AVX2/FMA/F16C kernel files; they are only called after a run-time CPU check.
set(DUET_AVX2_FLAGS -mavx2 -mfma -mf16c)
