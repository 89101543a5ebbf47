# libFuzzer targets (tests/fuzz/fuzz-*.c), built with clang into build/fuzz/ whatever
# SANITIZE says: they are always built with -fsanitize=fuzzer,address,undefined.
# The code under test is compiled again with clang (coverage instrumentation); the
# source lists come from the other module.mk files, so files added there join here.
#
#   make fuzz                       every target for FUZZ_TIME seconds (default 60),
#                                   one after the other under nice 10 (tests/fuzz/run-fuzz:
#                                   working corpora, findings and logs in build/fuzz/)
#   make fuzz FUZZ_RUNS=10000000    ... or for that many executions each
#   make fuzz FUZZ_TARGETS="msg vring" FUZZ_TIME=600
#   make fuzz-build                 only build them
#   make fuzz-seeds                 write the seed corpora again (tests/fuzz/mkseeds.c)
# `make check` runs tests/fuzz/test-fuzz.sh: each target over its checked-in corpus
# (tests/fuzz/corpus/<target>/: seeds, and the input of every finding fixed, named
# regress-*) plus a short fixed number of mutations.

FUZZ_CC   ?= clang
FZ        := build/fuzz
FUZZ_SAN  := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
             -fno-omit-frame-pointer
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) -Iprotocol -Itests -Itests/fuzz \
              -I$(FZ)/gen -MMD -MP $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(PKG_CFLAGS)
FUZZ_LDFLAGS := $(FUZZ_SAN) -fsanitize=fuzzer

FUZZ_NAMES := $(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c))
FUZZ_BINS  := $(FUZZ_NAMES:%=$(FZ)/fuzz-%)

$(FZ)/gen/vhost_pci.pb-c.c $(FZ)/gen/vhost_pci.pb-c.h &: protocol/vhost_pci.proto | deps-quiet
	@mkdir -p $(FZ)/gen
	$(Q)protoc-c --proto_path=protocol --c_out=$(FZ)/gen $<

$(FZ)/obj/%.o: %.c | deps-quiet $(FZ)/gen/vhost_pci.pb-c.h
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FZ)/obj/gen/vhost_pci.pb-c.o: $(FZ)/gen/vhost_pci.pb-c.c
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -Wno-shadow -c -o $@ $<

# The protocol library, clang-built.
FUZZ_VP_OBJS := $(VP_SRCS:%.c=$(FZ)/obj/%.o) $(FZ)/obj/gen/vhost_pci.pb-c.o

# What each target links besides its own object and the protocol library.
FUZZ_GUESTD_OBJS := $(GUESTD_SRCS:%.c=$(FZ)/obj/%.o)
FUZZ_EXTRA_controlq := $(FUZZ_GUESTD_OBJS)
FUZZ_EXTRA_vring := $(FUZZ_GUESTD_OBJS)
FUZZ_EXTRA_vhost-user := $(VU_CORE_SRCS:%.c=$(FZ)/obj/%.o)
FUZZ_EXTRA_qmp := $(SERVER_QMP_SRCS:%.c=$(FZ)/obj/%.o)
FUZZ_EXTRA_ivshmem := $(FZ)/obj/server/ivshmem_endpoint.o

$(FZ)/obj/guest-driver/%.o $(FZ)/obj/tests/fuzz/fuzz-vring.o \
$(FZ)/obj/tests/fuzz/fuzz-controlq.o: FUZZ_CFLAGS += -Iguest-driver -Itests/unit
$(FZ)/obj/tests/fuzz/fuzz-vhost-user.o: FUZZ_CFLAGS += -Iclient
$(FZ)/obj/tests/fuzz/fuzz-qmp.o $(FZ)/obj/tests/fuzz/fuzz-ivshmem.o: FUZZ_CFLAGS += -Iserver

define FUZZ_LINK
$(FZ)/fuzz-$(1): $(FZ)/obj/tests/fuzz/fuzz-$(1).o $(FUZZ_EXTRA_$(1)) $(FUZZ_VP_OBJS)
	$$(if $$(Q),@echo "  LD      $$@")
	$$(Q)$$(FUZZ_CC) $$(FUZZ_LDFLAGS) -o $$@ $$^ $$(PKG_LIBS)
endef
$(foreach t,$(FUZZ_NAMES),$(eval $(call FUZZ_LINK,$(t))))

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@tests/fuzz/run-fuzz $(FZ) $(FUZZ_TARGETS)

# make check: the fuzz targets are built first, then replayed by the test script.
check: $(FUZZ_BINS)
TESTS += tests/fuzz/test-fuzz.sh

# The top-level Makefile reads the dependency files of $(B) only.
ifneq ($(B),build)
-include $(shell find $(FZ) -name '*.d' 2>/dev/null)
endif

# The seed generator (tests/fuzz/mkseeds.c); the seeds it writes are checked in.
$(FZ)/obj/tests/fuzz/mkseeds.o: FUZZ_CFLAGS += -Iclient
$(FZ)/mkseeds: $(FZ)/obj/tests/fuzz/mkseeds.o $(FUZZ_VP_OBJS)
	$(Q)$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -o $@ $^ $(PKG_LIBS)
.PHONY: fuzz-seeds
fuzz-seeds: $(FZ)/mkseeds
	$(FZ)/mkseeds tests/fuzz/corpus
