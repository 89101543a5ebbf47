# e2e tests: boot real QEMU (run last by make check). Each helper appends its block.

# ---- h7: QMP client + ivshmem endpoint (server/qmp.c, server/ivshmem_endpoint.c) ----
# Unit tests of those server objects need them linked in (the generic unit-test rule
# only links testutil.o and libvhostpci.a).
$(B)/tests/unit/test-qmp: $(B)/server/qmp.o
$(B)/tests/unit/test-ivshmem-endpoint: $(B)/server/ivshmem_endpoint.o
