# e2e tests: boot real QEMU (run last by make check). Each helper appends its block.

# ---- h7: QMP client + ivshmem endpoint (server/qmp.c, server/ivshmem_endpoint.c) ----
# Unit tests of those server objects need them linked in (the generic unit-test rule
# only links testutil.o and libvhostpci.a).
$(B)/tests/unit/test-qmp: $(B)/server/qmp.o
$(B)/tests/unit/test-ivshmem-endpoint: $(B)/server/ivshmem_endpoint.o

# ---- h3: guest image + guest boot test (tools/mkguest, tools/guest/, tools/vp-guest) ----
# The e2e scripts build what they need themselves (tools/mkguest caches the image in
# $(B)/guest). VP_B tells them which build dir this make uses: B may be set inside make
# (SANITIZE=1 -> build/san), where the environment would not carry it.
export VP_B := $(B)

E2E_TESTS += tests/e2e/test-guest-boot.sh

# The guest image alone: `make guest-image` (includes guestd once it has been built).
.PHONY: guest-image
guest-image:
	tools/mkguest --out $(B)/guest --guestd $(B)/guest-driver/vhost-pci-guestd

# ---- h7 (continued): real QEMU, QMP hot-plug of ivshmem-plain / ivshmem-doorbell
# through our ivshmem endpoint (the guest part uses $(B)/guest when it exists).
H7_E2E := $(B)/tests/e2e/test-qemu-ivshmem
$(H7_E2E): $(B)/tests/e2e/test-qemu-ivshmem.o $(B)/server/qmp.o $(B)/server/ivshmem_endpoint.o \
           $(B)/server/devhost_qemu.o $(B)/server/devhost_qemu_sweep.o $(B)/tests/testutil.o $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
BINS += $(H7_E2E)
E2E_TESTS += $(H7_E2E)

# ---- h10: the pair with real QEMU (tools/vhost-pci-pair): traffic, memory hot-plug,
# clone, ADD_FAIL, driver VM shutdown. Boots the pair once for all its cases.
E2E_TESTS += tests/e2e/test-pair.sh

# ---- h11: a real driver VM whose virtio-net uses vhost-pci-client as its vhost-user
# backend (server + guestd on the host: --device-host local). `make check` builds the
# binaries it runs ($(B)/client/vhost-pci-client among them) before the e2e tests.
E2E_TESTS += tests/e2e/test-driver-vm.sh
# ---- end of h11 block ----

# ---- T: multi-queue with real QEMU (issue 10): 4 queue pairs, 2 vCPUs per VM,
# ethtool -L, parallel checksummed streams, memory hot-plug and unplug during them.
E2E_TESTS += tests/e2e/test-pair-mq.sh

# ---- C: feature renegotiation with a real QEMU driver VM (issue 9): guestd refuses
# MRG_RXBUF, vhost-pci-client --features-from-device, traffic with the reduced set.
E2E_TESTS += tests/e2e/test-pair-features.sh
