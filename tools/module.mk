# tools/: host-side utilities.

# --- vhost-pci-ctl (h4): inspect a vhost-pci-server through its --mgmt socket ---
$(B)/tools/vhost-pci-ctl: $(B)/tools/vhost-pci-ctl.o
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

BINS += $(B)/tools/vhost-pci-ctl

# --- vp-sockcat (h10): static UNIX-socket request/answer helper that the pair launcher
# puts into its guest image, to read vhost-pci-guestd's --status socket in the device VM.
$(B)/tools/vp-sockcat: $(B)/guest/tools/vp-sockcat.o
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_GUEST) -o $@ $^

BINS += $(B)/tools/vp-sockcat

# --- vhost-pci-frontend + vnet-bench (h9): a userspace virtio-net frontend playing a
# driver VM (tools/vnet-frontend/vnet_frontend.{c,h}, also linked by the data path
# integration tests), a TAP bridge over it, and the data path benchmark (tools/bench).
VNET_FE_OBJ := $(B)/tools/vnet-frontend/vnet_frontend.o
VNET_FE_LIBS := $(B)/libvhostpci-client.a $(B)/libvhostpci.a
$(B)/tools/vnet-frontend/%.o: CFLAGS_HOST += -Iclient -Itools/vnet-frontend
$(B)/tools/vnet-frontend/%.o: | $(VP_PB_H)

$(B)/tools/vhost-pci-frontend: $(B)/tools/vnet-frontend/vhost-pci-frontend.o $(VNET_FE_OBJ) \
                               $(VNET_FE_LIBS)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

$(B)/tools/vnet-bench: $(B)/tools/vnet-frontend/vnet-bench.o $(VNET_FE_OBJ) $(VNET_FE_LIBS)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

BINS += $(B)/tools/vhost-pci-frontend $(B)/tools/vnet-bench

# --- vu-pingpong (issue 11, latency): the test vhost-user frontend
# (tests/integration/vu_frontend) with a virtio-net driver data path, timing one
# frame's round trip through any reflecting vhost-user backend (tools/bench).
$(B)/tools/vu-pingpong.o: CFLAGS_HOST += -Iclient -Itests/integration
$(B)/tools/vu-pingpong.o: | $(VP_PB_H)
$(B)/tools/vu-pingpong: $(B)/tools/vu-pingpong.o $(B)/tests/integration/vu_frontend.o \
                        $(VU_CORE_SRCS:%.c=$(B)/%.o) \
                        $(B)/libvhostpci.a
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

BINS += $(B)/tools/vu-pingpong

# --- bench-memcpy (issue 11, "the limit"): single-core frame copy rate per size.
$(B)/tools/bench-memcpy: $(B)/tools/bench-memcpy.o
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^

BINS += $(B)/tools/bench-memcpy

# --- bench-corertt (issue 11): one cache line's round trip between the frontend's and
# the path's cores, probed around every measurement (the vCPUs' placement on the host).
$(B)/tools/bench-corertt: $(B)/tools/bench-corertt.o
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -pthread -o $@ $^

BINS += $(B)/tools/bench-corertt
