# Fault injection (issue 12 item 5): tests/fault/test-faults.c kills the client daemon,
# the server or the guestd at every message of the handshake and of memory
# hot-add/remove, hangs the links up there, and runs the scenario with short writes,
# EINTR (tests/fault/faultshim.so, LD_PRELOAD) and fragmented messages. Real
# processes, host-only; a proxy of its own (fault_proxy.c) on each link.

FAULT_TEST := $(B)/tests/fault/test-faults
FAULT_SHIM := $(B)/tests/fault/faultshim.so
FAULT_OBJS := $(B)/tests/fault/test-faults.o $(B)/tests/fault/fault_proxy.o \
              $(B)/tests/integration/itest.o $(B)/tests/integration/vu_frontend.o

$(FAULT_TEST): $(FAULT_OBJS) $(B)/tests/testutil.o $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS) -lpthread
$(B)/tests/fault/%.o: CFLAGS_HOST += -Iclient -Itests -Itests/integration
$(B)/tests/fault/%.o: | $(VP_PB_H)

# The shim is preloaded into sanitized and plain programs alike: no sanitizer in it.
$(FAULT_SHIM): tests/fault/faultshim.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) -std=c11 -O2 -g $(WARN) -shared -fPIC -o $@ $< -ldl

$(FAULT_TEST): | $(FAULT_SHIM) $(filter %/vhost-pci-server %/vhost-pci-guestd %/vhost-pci-ctl \
                                        %/vhost-pci-client,$(BINS))
TESTS += $(FAULT_TEST)
