# libvhostpci-client: the client side of the vhost-pci socket protocol (vpclient.h),
# plus the vhost-user backend core (vhost_user.h, helper h8) when it exists. The
# client daemon links this library. $(wildcard) keeps the build working while files
# of other owners are not written yet.
#   $(B)/libvhostpci-client.a   link before $(B)/libvhostpci.a

# The vhost-user core: the parent vhost_user.c and its children (vhost_user_priv.h).
VU_CORE_SRCS := client/vhost_user.c client/vhost_user_io.c client/vhost_user_mem.c \
                client/vhost_user_vring.c client/vhost_user_features.c
# The bridge state machine: the parent bridge.c and its children (bridge_priv.h).
BRIDGE_SRCS := client/bridge.c client/bridge_transitions.c client/bridge_requests.c \
               client/bridge_rings.c client/bridge_mem.c client/bridge_placeholder.c
BRIDGE_OBJS := $(BRIDGE_SRCS:%.c=$(B)/%.o)
VPCLIENT_SRCS := client/vpclient_core.c client/vpclient_glib.c client/vpclient_ops.c \
                 $(BRIDGE_SRCS) $(VU_CORE_SRCS)
VPCLIENT_OBJS := $(VPCLIENT_SRCS:%.c=$(B)/%.o)

# vp_msg.h users need the generated protobuf header only through libvhostpci, but
# the objects must wait for it on a fresh build (vp_msg.o does).
$(VPCLIENT_OBJS): | $(VP_PB_H)

$(B)/libvhostpci-client.a: $(VPCLIENT_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

BINS += $(B)/libvhostpci-client.a

# ---- vhost-user backend core (helper h8): client/vhost_user*.c ----
# VU_CORE_SRCS is picked up by VPCLIENT_SRCS above; the GLib adapter joins the
# library here. The unit test also links the scripted frontend of tests/integration.
VU_OBJS := $(VU_CORE_SRCS:%.c=$(B)/%.o) $(B)/client/vhost_user_glib.o
$(B)/libvhostpci-client.a: $(B)/client/vhost_user_glib.o
$(VU_OBJS): | $(VP_PB_H)

$(B)/tests/unit/test-vhost-user.o $(B)/tests/integration/vu_frontend.o: \
    CFLAGS_HOST += -Iclient -Itests -Itests/integration
$(B)/tests/unit/test-vhost-user.o $(B)/tests/integration/vu_frontend.o: | $(VP_PB_H)
$(B)/tests/unit/test-vhost-user: $(B)/tests/unit/test-vhost-user.o \
    $(B)/tests/integration/vu_frontend.o $(VU_OBJS) $(B)/tests/testutil.o \
    $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)

# The bridge state machine behind the real vhost-user core, with a scripted server.
$(B)/tests/unit/test-bridge.o: CFLAGS_HOST += -Iclient -Itests -Itests/integration
$(B)/tests/unit/test-bridge.o: | $(VP_PB_H)
$(B)/tests/unit/test-bridge: $(B)/tests/unit/test-bridge.o \
    $(B)/tests/integration/vu_frontend.o $(VU_OBJS) $(BRIDGE_OBJS) \
    $(B)/tests/testutil.o $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
# ---- end of h8 block ----

# ---- vhost-pci-client daemon (helper h11): client/main.c + client/daemon_*.c ----
# The driver VM's vhost-user backend: vhost-user core + libvhostpci-client. main.c is
# the parent, daemon_*.c its children (daemon.h).
VPC_DAEMON := $(B)/client/vhost-pci-client
VPC_DAEMON_OBJS := $(B)/client/main.o $(B)/client/daemon_options.o \
                   $(B)/client/daemon_bridge.o $(B)/client/daemon_conn.o
$(VPC_DAEMON_OBJS): | $(VP_PB_H)
$(VPC_DAEMON): $(VPC_DAEMON_OBJS) $(B)/libvhostpci-client.a $(B)/libvhostpci.a
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $^ $(PKG_LIBS)
BINS += $(VPC_DAEMON)
# ---- end of h11 block ----
