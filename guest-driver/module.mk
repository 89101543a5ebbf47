# vhost-pci-guestd: the guest driver (libc only, static). Its objects are built twice:
# guest flavour ($(B)/guest/guest-driver/*.o, CFLAGS_GUEST) for the binary, host
# flavour ($(B)/guest-driver/*.o) for the unit tests, which link GLib.

GUESTD_SRCS := guest-driver/log.c guest-driver/loop.c guest-driver/json.c \
               guest-driver/ctrlarea.c guest-driver/controlq.c \
               guest-driver/device.c guest-driver/device_windows.c \
               guest-driver/device_msgs.c guest-driver/controlplane.c guest-driver/status.c \
               guest-driver/bus_local.c guest-driver/bus_pci.c
GUESTD_MAIN  := guest-driver/main.c

# vhost-pci-net data path and its endpoints (helper h9: net.h, endpoint.h).
GUESTD_SRCS += guest-driver/net.c guest-driver/net_path.c guest-driver/net_worker.c \
               guest-driver/endpoint.c guest-driver/endpoint_tap.c \
               guest-driver/endpoint_loopback.c guest-driver/endpoint_unix.c \
               guest-driver/endpoint_switch.c

GUESTD_GOBJS := $(GUESTD_SRCS:%.c=$(B)/guest/%.o) $(GUESTD_MAIN:%.c=$(B)/guest/%.o)
GUESTD_HOBJS := $(GUESTD_SRCS:%.c=$(B)/%.o)

$(B)/guest-driver/vhost-pci-guestd: $(GUESTD_GOBJS) $(B)/libvhostpci-core-guest.a
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_GUEST) -o $@ $^

BINS += $(B)/guest-driver/vhost-pci-guestd

# Unit tests of the guest driver (tests/unit/test-guestd-*.c): host-flavour objects
# + the test + libvhostpci.a. This pattern's stem is shorter than tests/module.mk's,
# so make prefers it.
$(B)/tests/unit/test-guestd-%: $(B)/tests/unit/test-guestd-%.o $(B)/tests/testutil.o \
                               $(GUESTD_HOBJS) $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

$(B)/tests/unit/test-guestd-%.o: CFLAGS_HOST += -Iguest-driver
# Named as targets, so that make takes the rule above (not tests/module.mk's) even in
# a tree where a new source file's object does not exist yet.
$(GUESTD_HOBJS):
# (The top-level Makefile's .SECONDARY: keeps these objects from being deleted.)
