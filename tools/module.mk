# tools/: host-side utilities.

# --- vhost-pci-ctl (h4): inspect a vhost-pci-server through its --mgmt socket ---
$(B)/tools/vhost-pci-ctl: $(B)/tools/vhost-pci-ctl.o
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

BINS += $(B)/tools/vhost-pci-ctl
