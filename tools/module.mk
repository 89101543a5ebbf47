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
