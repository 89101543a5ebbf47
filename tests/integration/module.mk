# Integration tests (host-only, real processes): GTest programs, TAP.
#   test-client-lib      libvhostpci-client against a scripted fake server
#   test-control-plane   client library + vhost-pci-server (--device-host local) +
#                        vhost-pci-guestd (--bus local): spec 1.5/1.6 sequences
#   test-bad-input       malformed and hostile socket input against the same pair
# Helpers: itest.{c,h} (temp dir, child processes, status JSON, memory, devices),
#          itest_fakegd.{c,h} (a pretend guestd in a thread on the local bus),
#          itest_frames.{c,h} (checked frames, loopback traffic through tools/vnet-frontend:
#          ITEST_FRAMES, for the tests that also link $(VNET_FE_OBJ)).
# Other owners may add their own tests here through tests/integration/vu*.mk.

ITEST_NAMES  := test-client-lib test-control-plane test-bad-input
ITEST_NAMES  := $(foreach n,$(ITEST_NAMES),$(if $(wildcard tests/integration/$(n).c),$(n)))
ITESTS       := $(ITEST_NAMES:%=$(B)/tests/integration/%)
ITEST_HELPER := $(if $(wildcard tests/integration/itest.c),$(B)/tests/integration/itest.o \
                  $(B)/tests/integration/itest_fakegd.o)

$(ITESTS): $(B)/tests/integration/%: $(B)/tests/integration/%.o $(ITEST_HELPER) \
           $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

$(ITESTS:%=%.o) $(ITEST_HELPER): | $(VP_PB_H)
$(ITESTS:%=%.o) $(ITEST_HELPER): CFLAGS_HOST += -Iclient -Itests -Itests/integration

ITEST_FRAMES := $(B)/tests/integration/itest_frames.o
$(ITEST_FRAMES): | $(VP_PB_H)
$(ITEST_FRAMES): CFLAGS_HOST += -Iclient -Itests -Itests/integration -Itools/vnet-frontend

# The programs the tests start (built first when their module exists).
$(filter-out %/test-client-lib,$(ITESTS)): | $(filter %/vhost-pci-server %/vhost-pci-guestd %/vhost-pci-ctl,$(BINS))

TESTS += $(ITESTS)

-include $(wildcard tests/integration/vu*.mk)

# ---- h9: data path (vhost-pci-net) tests ----
#   test-datapath            real server + guestd (--endpoint loopback / unix) and the
#                            userspace virtio-net frontend (tools/vnet-frontend) in the test
#   test-datapath-netns.sh   two TAPs in two network namespaces, ping + TCP across
DP_ITEST := $(B)/tests/integration/test-datapath
$(DP_ITEST): $(B)/tests/integration/test-datapath.o $(ITEST_HELPER) $(ITEST_FRAMES) $(VNET_FE_OBJ) \
             $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(DP_ITEST).o: | $(VP_PB_H)
$(DP_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Itools/vnet-frontend
$(DP_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd %/vhost-pci-frontend,$(BINS))
export VP_B := $(B)
TESTS += $(DP_ITEST) $(wildcard tests/integration/test-datapath-netns.sh)

# ---- G: guestd's switch endpoint between several pretend driver VMs
# (tests/integration/test-switch.c), the multi-queue TAP (test-tap-mq.c) ----
SW_ITEST := $(B)/tests/integration/test-switch
$(SW_ITEST): $(B)/tests/integration/test-switch.o $(ITEST_HELPER) $(ITEST_FRAMES) $(VNET_FE_OBJ) \
             $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(SW_ITEST).o: | $(VP_PB_H)
$(SW_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Itools/vnet-frontend
$(SW_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd,$(BINS))
TESTS += $(SW_ITEST)
# The TAP endpoint with two queue pairs on two workers, in a network namespace of its own.
TAPMQ_ITEST := $(B)/tests/integration/test-tap-mq
$(TAPMQ_ITEST): $(B)/tests/integration/test-tap-mq.o $(ITEST_HELPER) $(ITEST_FRAMES) $(VNET_FE_OBJ) \
                $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(TAPMQ_ITEST).o: | $(VP_PB_H)
$(TAPMQ_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Itools/vnet-frontend
$(TAPMQ_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd,$(BINS))
TESTS += $(TAPMQ_ITEST)
# ---- end of G's switch block ----

# ---- h11: the vhost-pci-client daemon between the scripted QEMU 7.2 frontend and a
# real server + guestd (tests/integration/test-client-daemon.c) ----
H11_ITEST := $(B)/tests/integration/test-client-daemon
$(H11_ITEST): $(B)/tests/integration/test-client-daemon.o $(B)/tests/integration/itest.o \
              $(B)/tests/integration/vu_frontend.o $(B)/tests/testutil.o \
              $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(H11_ITEST).o: | $(VP_PB_H)
$(H11_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration
$(H11_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd %/vhost-pci-ctl %/vhost-pci-client,$(BINS))
TESTS += $(H11_ITEST)
# ---- end of h11 block ----

# ---- h15: the server's mgmt socket against clients that do not read or crowd it
# (tests/integration/test-mgmt-clients.c; reads the limits from server/mgmt.h) ----
H15_ITEST := $(B)/tests/integration/test-mgmt-clients
$(H15_ITEST): $(B)/tests/integration/test-mgmt-clients.o $(B)/tests/integration/itest.o \
              $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(H15_ITEST).o: | $(VP_PB_H)
$(H15_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Iserver
$(H15_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd,$(BINS))
TESTS += $(H15_ITEST)
# ---- end of h15 block ----

# ---- P (issue 12, the server's side): limits, fairness, identity
# (tests/integration/test-server-limits.c) ----
P12_ITEST := $(B)/tests/integration/test-server-limits
$(P12_ITEST): $(B)/tests/integration/test-server-limits.o $(B)/tests/integration/itest.o \
              $(ITEST_FRAMES) $(VNET_FE_OBJ) $(B)/tests/testutil.o $(B)/libvhostpci-client.a \
              $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS) -lpthread
$(P12_ITEST).o: | $(VP_PB_H)
$(P12_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Iserver -Itools/vnet-frontend
$(P12_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd,$(BINS))
TESTS += $(P12_ITEST)
# ---- end of P block ----

# ---- h14: a guest driver that is killed or breaks and is replaced
# (tests/integration/test-driver-reset.c: restart, data path, NEEDS_RESET) ----
H14_ITEST := $(B)/tests/integration/test-driver-reset
$(H14_ITEST): $(B)/tests/integration/test-driver-reset.o $(ITEST_HELPER) $(ITEST_FRAMES) \
              $(VNET_FE_OBJ) $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(H14_ITEST).o: | $(VP_PB_H)
$(H14_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration -Itools/vnet-frontend
$(H14_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd,$(BINS))
TESTS += $(H14_ITEST)
# ---- end of h14 block ----

# ---- issue 9: the client daemon with a real DPDK 22.11 virtio-user frontend
# (dpdk-testpmd; tests/integration/test-dpdk-interop.c) ----
DPDK_ITEST := $(B)/tests/integration/test-dpdk-interop
$(DPDK_ITEST): $(B)/tests/integration/test-dpdk-interop.o $(B)/tests/integration/itest.o \
               $(B)/tests/integration/vu_frontend.o \
               $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
$(DPDK_ITEST).o: | $(VP_PB_H)
$(DPDK_ITEST).o: CFLAGS_HOST += -Iclient -Itests -Itests/integration
$(DPDK_ITEST): | $(filter %/vhost-pci-server %/vhost-pci-guestd %/vhost-pci-client,$(BINS))
TESTS += $(DPDK_ITEST)
# ---- end of the DPDK interop block ----
# ---- T: the bench's smoke run (tools/bench --smoke: every path measured once, no
# figure judged), needs dpdk-testpmd; last of the host-only tests (about a minute).
TESTS += tests/integration/test-bench-smoke.sh
