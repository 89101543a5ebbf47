# vhost-pci top-level Makefile (non-recursive; each component adds itself through
# its module.mk).
#
#   make                 build everything into build/
#   make check           install missing deps, build, run every test (last line:
#                        "N passed, N failed"); the e2e tests run on QEMU 7.2 and on
#                        10.0 (fetched into build/qemu/ on first use)
#   make check QEMU=SEL  the e2e tests on one QEMU only (7.2, 10.0 or a path); QEMU=SEL
#                        also picks the QEMU of make demo and make bench
#   make check SANITIZE=1  the same with ASan + UBSan, into build/san/
#   make demo            boot the paired VMs and exchange packets
#   make bench           benchmarks (print figures)
#   make soak            minutes of traffic, memory hot-plug and restarts on the VM pair
#                        (SOAK_MINUTES, default 5); fd counts and RSS at start and end
#   make clean

CC      ?= gcc
SANITIZE ?=
V ?=

ifeq ($(SANITIZE),1)
B       := build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
B       := build
SANFLAGS :=
endif

PKGS     := glib-2.0 gio-unix-2.0 json-glib-1.0 libprotobuf-c uuid
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-missing-field-initializers
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) -Iprotocol -Itests -I$(B)/gen -MMD -MP
CFLAGS_HOST  = $(BASE_CFLAGS) $(SANFLAGS) $(PKG_CFLAGS)
LDFLAGS_HOST = $(SANFLAGS)
# The guest driver: libc only, static (it runs in a tiny initramfs). Sanitized builds
# link it dynamically (ASan does not support -static).
CFLAGS_GUEST  = $(BASE_CFLAGS) $(SANFLAGS)
LDFLAGS_GUEST = $(if $(SANFLAGS),$(SANFLAGS),-static)

Q := $(if $(V),,@)

# The QEMU selector (tools/qemu-select): 7.2, 10.0 or a path; empty: the system's.
# make check runs the e2e tests once per QEMU of CHECK_QEMUS.
QEMU ?=
export QEMU
CHECK_QEMUS ?= $(if $(QEMU),$(QEMU),7.2 10.0)

# Filled by the module.mk files.
BINS :=
TESTS :=          # test programs, run by tests/run in this order
E2E_TESTS :=      # tests that boot real QEMU (run last)
CLEAN_EXTRA :=

.PHONY: all check demo bench soak clean deps
all:

# Keep every intermediate file (objects of test programs): make would otherwise
# delete them after the run and print "rm ..." after the test summary line.
# Never give .SECONDARY prerequisites in a module.mk: that turns this off.
.SECONDARY:

include protocol/module.mk
-include server/module.mk
-include client/module.mk
-include guest-driver/module.mk
-include tools/module.mk
-include tests/module.mk

all: $(BINS) $(TESTS)

# Generic compile rules. Objects of guest-driver/ and of the libc-only protocol core
# used by it are built twice: host flavour (with GLib flags) and guest flavour.
$(B)/%.o: %.c | deps-quiet
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_HOST) -c -o $@ $<

$(B)/guest/%.o: %.c | deps-quiet
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC(g)   $<")
	$(Q)$(CC) $(CFLAGS_GUEST) -c -o $@ $<

deps:
	tools/install-deps

# Install missing packages before the first compile (quiet when all are present).
.PHONY: deps-quiet
deps-quiet:
	@tools/install-deps -q

check: all
	@tests/run $(TESTS) $(if $(strip $(E2E_TESTS)),--e2e-qemus "$(CHECK_QEMUS)" $(E2E_TESTS))

bench: all
	@tools/bench $(B)

demo: all
	@tools/demo $(B)

SOAK_MINUTES ?= 5
soak: all
	@tools/soak $(B) --minutes $(SOAK_MINUTES)

clean:
	rm -rf build $(CLEAN_EXTRA)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
