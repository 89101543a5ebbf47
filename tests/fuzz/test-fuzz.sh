#!/usr/bin/env bash
# make check's share of the fuzzing (TAP): every libFuzzer target of tests/fuzz/ runs
# over its checked-in corpus (tests/fuzz/corpus/<target>/: the seeds and the input of
# every finding fixed so far, so each one is a regression test) and then a short fixed
# number of mutations (FUZZ_CHECK_RUNS, default 3000; fixed -seed, so a run is
# repeatable). A crash, sanitizer report, leak, leaked fd or timeout fails the test
# and leaves the input in build/fuzz/check-findings/<target>/.
# The targets are built by `make check` (tests/fuzz/module.mk) into build/fuzz/.
set -u
. "$(dirname "$0")/../tap.sh"

fz=${FUZZ_DIR:-build/fuzz}
runs=${FUZZ_CHECK_RUNS:-3000}
corpus=tests/fuzz/corpus
targets=$(ls "$corpus")
tap_plan "$(echo "$targets" | wc -w)"
for t in $targets; do
    bin=$fz/fuzz-$t
    if [ ! -x "$bin" ]; then
        not_ok "fuzz-$t" "$bin not built (make check builds it with clang)"
        continue
    fi
    work=$(mktemp -d)
    findings=$fz/check-findings/$t
    rm -rf "$findings"
    mkdir -p "$findings"
    dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    start=$(date +%s%N)
    # The first corpus directory receives new inputs: a scratch one, so the checked-in
    # corpus stays as it is.
    "$bin" -runs="$runs" -seed=1 -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$findings/" "${dict[@]}" \
        "$work" "$corpus/$t" >"$work.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    inputs=$(ls "$corpus/$t" | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log")
    if [ "$rc" -eq 0 ] && [ -z "$(ls "$findings")" ]; then
        ok "fuzz-$t: $inputs corpus inputs replayed, ${execs:-?} executions in $ms ms, no finding"
        rmdir "$findings"
    else
        cp "$work.log" "$findings/log"
        not_ok "fuzz-$t: exit status $rc, input and log in $findings/" \
            "$(grep -E "ERROR:|SUMMARY:|invariant|fuzz: fd|runtime error" "$work.log" | head -5)"
    fi
    rm -rf "$work" "$work.log"
done
