# libvhostpci-client: the client side of the vhost-pci socket protocol (vpclient.h),
# plus the vhost-user backend core (vhost_user.h, helper h8) when it exists. The
# client daemon links this library. $(wildcard) keeps the build working while files
# of other owners are not written yet.
#   $(B)/libvhostpci-client.a   link before $(B)/libvhostpci.a

VPCLIENT_SRCS := client/vpclient_core.c client/vpclient_glib.c client/vpclient_ops.c \
                 $(wildcard client/vhost_user.c)
VPCLIENT_OBJS := $(VPCLIENT_SRCS:%.c=$(B)/%.o)

# vp_msg.h users need the generated protobuf header only through libvhostpci, but
# the objects must wait for it on a fresh build (vp_msg.o does).
$(VPCLIENT_OBJS): | $(VP_PB_H)

$(B)/libvhostpci-client.a: $(VPCLIENT_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

BINS += $(B)/libvhostpci-client.a
