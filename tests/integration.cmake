# The mesh end to end (ctest label integration): `duet up` with real redis-server, gRPC on loopback
# and UCX, against the default model. Serial: each run starts a whole mesh on this machine's cores.
if(DUET_MODEL_PATH)
  duet_test(test_mesh_sm LABELS integration SOURCES integration/test_mesh.c integration/mesh_harness.c integration/gateway_call.c
            ARGS $<TARGET_FILE:duet> ${DUET_MODEL_PATH} pair LIBS duet_rpc duet_state duet_proto)
  add_test(NAME test_mesh_tcp COMMAND test_mesh_sm $<TARGET_FILE:duet> ${DUET_MODEL_PATH} pair)
  add_test(NAME test_mesh_mixed COMMAND test_mesh_sm $<TARGET_FILE:duet> ${DUET_MODEL_PATH} mixed)
  add_test(NAME test_mesh_nodecode COMMAND test_mesh_sm $<TARGET_FILE:duet> ${DUET_MODEL_PATH} nodecode)
  set_tests_properties(test_mesh_sm PROPERTIES ENVIRONMENT "UCX_TLS=sm")
  set_tests_properties(test_mesh_tcp PROPERTIES ENVIRONMENT "UCX_TLS=tcp")
  set_tests_properties(test_mesh_sm test_mesh_tcp test_mesh_mixed test_mesh_nodecode PROPERTIES
                       LABELS integration RUN_SERIAL TRUE TIMEOUT 900)
endif()
