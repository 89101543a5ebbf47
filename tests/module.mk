# Tests. Unit tests: tests/unit/test-*.c, one GTest program each, linked with
# libvhostpci (and, for those listed in UNIT_EXTRA_LIBS_<name>, more).
# Integration tests are added by tests/integration/module.mk, e2e by tests/e2e/module.mk.

UNIT_SRCS  := $(wildcard tests/unit/test-*.c)
UNIT_TESTS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/unit/%)

# Archives go last: objects a module.mk adds to a test (e.g. server/*.o) may need them.
$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/tests/testutil.o $(B)/libvhostpci.a
	$(Q)$(CC) $(LDFLAGS_HOST) -o $@ $(filter-out %.a,$^) $(filter %.a,$^) $(PKG_LIBS)

TESTS += $(UNIT_TESTS)

-include tests/integration/module.mk
-include tests/fault/module.mk
-include tests/e2e/module.mk
-include tests/fuzz/module.mk
