# tests/state.cmake — lib/state's test against a real redis-server that it starts itself;
# included from tests/CMakeLists.txt. Registered only where redis-server is installed.
find_program(DUET_REDIS_SERVER redis-server)
if(DUET_REDIS_SERVER)
  duet_test(test_state LABELS integration SOURCES unit/test_state.c LIBS duet_state)
else()
  message(STATUS "duet: redis-server not found; test_state is not registered")
endif()
