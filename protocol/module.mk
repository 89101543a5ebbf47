# libvhostpci: the protocol library.
#   $(B)/libvhostpci-core.a  libc only: protocol table, output queue, controlq, vring, memory table, BAR, control area, local bus
#                            (the guest driver links the guest flavour of it)
#   $(B)/libvhostpci.a       core + socket messages (protobuf-c) + validation + GLib adapters

VP_CORE_SRCS := protocol/vp_common.c protocol/vp_wire.c protocol/vp_controlq.c protocol/vp_memtable.c \
                protocol/vp_proto.c protocol/vp_outq.c \
                protocol/vp_vring.c protocol/vp_bar.c protocol/vp_localbus.c
VP_SRCS      := $(VP_CORE_SRCS) protocol/vp_msg.c protocol/vp_payload.c protocol/vp_validate.c \
                protocol/vp_log_glib.c protocol/vp_outq_glib.c

VP_PB_C := $(B)/gen/vhost_pci.pb-c.c
VP_PB_H := $(B)/gen/vhost_pci.pb-c.h

$(VP_PB_C) $(VP_PB_H) &: protocol/vhost_pci.proto | deps-quiet
	@mkdir -p $(B)/gen
	$(if $(Q),@echo "  PROTOC  $<")
	$(Q)protoc-c --proto_path=protocol --c_out=$(B)/gen $<

$(B)/gen/vhost_pci.pb-c.o: $(VP_PB_C)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_HOST) -Wno-shadow -c -o $@ $<

$(B)/protocol/vp_payload.o: $(VP_PB_H)

VP_CORE_OBJS  := $(VP_CORE_SRCS:%.c=$(B)/%.o)
VP_CORE_GOBJS := $(VP_CORE_SRCS:%.c=$(B)/guest/%.o)
VP_OBJS       := $(VP_SRCS:%.c=$(B)/%.o) $(B)/gen/vhost_pci.pb-c.o

$(B)/libvhostpci-core.a: $(VP_CORE_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^
$(B)/libvhostpci-core-guest.a: $(VP_CORE_GOBJS)
	$(Q)rm -f $@ && ar rcs $@ $^
$(B)/libvhostpci.a: $(VP_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

BINS += $(B)/libvhostpci.a $(B)/libvhostpci-core.a $(B)/libvhostpci-core-guest.a
