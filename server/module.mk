# vhost-pci-server (h4). Device hosts are listed here; the qemu host (h7) joins by
# adding its files to SERVER_HOST_SRCS (main.c picks it up through a weak symbol).

SERVER_CORE_SRCS := server/layout.c
SERVER_HOST_SRCS := server/devhost_local.c
SERVER_SRCS := $(SERVER_CORE_SRCS) $(SERVER_HOST_SRCS) server/unix_listen.c \
               server/devfn.c server/ctrlarea.c server/cq_dev.c server/windows.c \
               server/frontends.c server/cqmsg.c server/device.c server/clone.c \
               server/jobs.c server/tenant.c server/req_memory.c server/req_device.c \
               server/req_features.c server/closing.c server/session.c server/mgmt.c \
               server/ratelimit.c server/resources.c server/refusals.c server/main.c

SERVER_OBJS := $(SERVER_SRCS:%.c=$(B)/%.o)

$(B)/server/vhost-pci-server: $(SERVER_OBJS) $(B)/libvhostpci.a
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

BINS += $(B)/server/vhost-pci-server

# Unit tests of the server's pure logic link its GLib-free core objects (an explicit
# rule: the objects must come before libvhostpci.a on the link line).
$(B)/tests/unit/test-server-layout: $(B)/tests/unit/test-server-layout.o \
                                    $(SERVER_CORE_SRCS:%.c=$(B)/%.o) $(B)/server/windows.o \
                                    $(B)/tests/testutil.o $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

# ---- h7: the qemu device host (QMP client + ivshmem endpoints) ----
# A separate prerequisite line: the link recipe above uses $^, which collects the
# prerequisites of every rule for the target.
H7_SERVER_OBJS := $(B)/server/devhost_qemu.o $(B)/server/devhost_qemu_sweep.o $(B)/server/qmp.o $(B)/server/ivshmem_endpoint.o
$(B)/server/vhost-pci-server: $(H7_SERVER_OBJS)

# The local device host on its own (fd ownership on failed plugs).
$(B)/tests/unit/test-devhost-local: $(B)/tests/unit/test-devhost-local.o \
                                    $(B)/server/devhost_local.o $(B)/server/unix_listen.o \
                                    $(B)/tests/testutil.o $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

# The QMP client is three objects (qmp.c, qmp_recv.c, qmp_sync.c); the tests that
# link qmp.o by name (tests/e2e/module.mk) get the other two here; the fuzz targets
# use SERVER_QMP_SRCS.
SERVER_QMP_SRCS := server/qmp.c server/qmp_recv.c server/qmp_sync.c
QMP_EXTRA_OBJS := $(B)/server/qmp_recv.o $(B)/server/qmp_sync.o
$(B)/server/vhost-pci-server: $(QMP_EXTRA_OBJS)
$(B)/tests/unit/test-qmp: $(QMP_EXTRA_OBJS)
$(B)/tests/e2e/test-qemu-ivshmem: $(QMP_EXTRA_OBJS)

# The devfn allocator with a fake device host (zombie devfns, devhost.h devfn_held).
$(B)/tests/unit/test-devfn: $(B)/server/devfn.o
