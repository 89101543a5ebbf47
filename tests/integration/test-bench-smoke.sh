#!/usr/bin/env bash
# The bench works (`make bench`, tools/bench): its --smoke run (one short run of 64 B
# per path) measures every path it can run here and writes results.json. Checks that
# the figures exist and are sane in form (frames > 0, CPU time counted), never their
# values: make check has no timing assertions. Prints TAP.
#
# Environment: VP_B (or B) build dir (default build). Results and logs go to
# $VP_B/test-logs/bench-smoke/.
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
# shellcheck source=../tap.sh
. tests/tap.sh
tap_plan 10
command -v dpdk-testpmd >/dev/null || skip_rest "dpdk-testpmd not installed (tools/install-deps)"
command -v jq >/dev/null || skip_rest "jq not installed (tools/install-deps)"

out=$B/test-logs/bench-smoke
rm -rf "$out"
mkdir -p "$out"
r=$out/results.json
tools/bench "$B" --smoke --out "$r" >"$out/bench.out" 2>"$out/bench.err" &
bpid=$!
wait "$bpid"
rc=$?
if [ "$rc" = 0 ] && jq -e . "$r" >/dev/null 2>&1; then
    ok "tools/bench --smoke exits 0 and writes results.json"
else
    not_ok "tools/bench --smoke exits 0 and writes results.json" "rc=$rc" "$(tail -n 20 "$out/bench.err")"
    fail_rest "no results"
fi
j() { jq -r "$1" "$r"; }
check "machine described: $(j '"\(.machine.cpu_model), \(.machine.cpus) CPUs"')" \
    test "$(j '(.machine.cpu_model | length > 0) and .machine.cpus >= 1')" = true
check "copy limit measured at 64 B: $(j '.limit[0].mpps') Mpps" \
    test "$(j '.limit[0].size == 64 and .limit[0].mpps > 0')" = true
tp() {   # PATH: a throughput figure with frames and CPU time
    test "$(j "[.measurements[] | select(.kind == \"throughput\" and .path == \"$1\" and .size == 64
               and .frames > 0 and .cpu_s > 0)] | length >= 1")" = true
}
for p in vhost-pci dpdk-vhost; do
    if tp "$p"; then ok "reflect through $p: frames and CPU-seconds counted"
    else not_ok "reflect through $p measured" "$(grep -i "$p" "$out/bench.err" | tail -n 5)"; fi
done
# guestd's switch endpoint, when it has one, is a VM-to-VM path of its own.
vpsw=ok
if [ "$(j '.notes["vhost-pci-switch"]')" = null ] && ! tp vhost-pci-switch; then vpsw=missing; fi
if tp dpdk-switch && [ "$vpsw" = ok ]; then
    ovs=$(j 'if any(.measurements[]; .path == "ovs-dpdk") then "ovs-dpdk measured" else "ovs-dpdk not measured: \(.notes["ovs-dpdk"])" end')
    if [ "$ovs" != "ovs-dpdk not measured: null" ]; then ok "VM to VM through dpdk-switch$([ "$(j '.notes["vhost-pci-switch"]')" = null ] && echo " and vhost-pci-switch") measured; $ovs"
    else not_ok "VM to VM: ovs-dpdk neither measured nor explained"; fi
else
    not_ok "VM to VM through dpdk-switch (and vhost-pci-switch when guestd has it) measured" "vhost-pci-switch: $vpsw" "$(grep -i switch "$out/bench.err" | tail -n 5)"
fi
# Two queue pairs (issue 10): both paths measured with 2 pairs, the scaling against
# one pair computed and what bounds it said.
mp=$(j '[.multi_pair.scaling[]? | select(.pairs == 2 and .scaling > 0 and .cpu_s_per_mframe > 0) | .path] | sort | join(",")')
if [ "$mp" = "dpdk-vhost,vhost-pci" ] && [ "$(j '.multi_pair.bound | length > 0')" = true ]; then
    ok "2 queue pairs on both paths: scaling $(j '[.multi_pair.scaling[] | "\(.path) \(.scaling * 100 | round / 100)x"] | join(", ")'); bound said"
else
    not_ok "2 queue pairs measured on both paths, scaling and bound in .multi_pair" "paths: $mp" \
        "$(grep -i 'pairs' "$out/bench.err" | tail -n 5)"
fi
# Where the host had put the two vCPUs (bench-corertt before and after each
# measurement): every figure carries its placement, and the table says it.
if [ "$(nproc)" -ge 2 ]; then
    plc=$(j '[.measurements[] | select(.kind == "throughput" or .kind == "latency") |
              select((.core_rtt_ns | length) == 2 and all(.core_rtt_ns[]; type == "number" and . > 0)
                     and (.placement == "near" or .placement == "far" or .placement == "moved"))] | length')
    all=$(j '[.measurements[] | select(.kind == "throughput" or .kind == "latency")] | length')
    if [ "$plc" = "$all" ] && [ "$all" -gt 0 ] && grep -q '^cores: .* ns (near' "$out/bench.out" &&
       grep -q '^| 64 B | vhost-pci | \(near\|far\|moved\)' "$out/bench.out"; then
        ok "placement of the vCPUs probed around each of $all measurements ($(j '[.placements | to_entries[] | "\(.key) \(.value.core_rtt_ns) ns"] | join(", ")')), shown per row"
    else
        not_ok "placement probed around every measurement and shown" "with probes: $plc of $all" \
            "$(grep '^cores' "$out/bench.out")"
    fi
else
    n=$((n + 1)); echo "ok $n # SKIP one CPU: no second core to probe the placement against"
fi
lat=$(j '[.latency[] | select(.median_us.median > 0 and .p99_us.median >= .median_us.median) | .path] | sort | join(",")')
left=$(pgrep -f "vpb-$bpid-" 2>/dev/null | tr '\n' ' ')
if [ "$lat" = "dpdk-vhost,vhost-pci" ] && [ -z "$left" ]; then
    ok "latency measured on both paths (vu-pingpong); no process of the bench left"
else
    not_ok "latency on both paths, nothing left running" "latency paths: $lat" "left: $left" \
        "$(tail -n 5 "$out/bench.err")"
fi

# --guestd-b adds a "vhost-pci-b" latency row in the same run (issue 11: a data path
# change judged against its before path), with its ratio in the table.
rb=$out/results-b.json
tools/bench "$B" --smoke --only latency --guestd-b "$B/guest-driver/vhost-pci-guestd" \
    --out "$rb" >"$out/bench-b.out" 2>"$out/bench-b.err"
rc=$?
latb=$(jq -r '[.latency[] | select(.median_us.median > 0) | .path] | sort | join(",")' "$rb" 2>/dev/null)
if [ "$rc" = 0 ] && [ "$latb" = "dpdk-vhost,vhost-pci,vhost-pci-b" ] &&
   grep -q '^| vhost-pci-b | .* | ~\?[0-9.]*x | ~\?[0-9.]*x |$' "$out/bench-b.out" &&
   grep -q 'vhost-pci-b (--guestd-b/--client-args-b) / vhost-pci, same run (.*): median ~\?[0-9.]*x' "$out/bench-b.out"; then
    ok "--guestd-b: latency row vhost-pci-b measured in the same run, ratios printed"
else
    not_ok "--guestd-b: latency row vhost-pci-b with its ratio" "rc=$rc paths: $latb" \
        "$(tail -n 8 "$out/bench-b.out")" "$(tail -n 5 "$out/bench-b.err")"
fi
