#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # run, pair, blocked: tests/e2e/pair-lib.sh
# e2e (issue 10): multi-queue virtio-net through vhost-pci with real QEMU. The pair of
# tools/vhost-pci-pair is booted once with 4 queue pairs: the driver VM has 2 vCPUs and
# `-netdev vhost-user,queues=4` + virtio-net-pci mq=on (vectors=10 with MSI-X on 10.0,
# vectors=0 on 7.2, see tools/qemu-select), vhost-pci-client --queues 4; the device VM
# has 2 vCPUs, so vhost-pci-guestd runs 2 data path workers, each with its queue of the
# multi-queue TAP vp0. Cases:
#
#   the driver VM's kernel enables min(vCPUs, pairs) = 2 pairs by itself;
#   `ethtool -L eth0 combined 4` enables all 4 (QEMU's control queue -> SET_VRING_ENABLE
#   -> the client registers the device again with 8 virtqueues, seen by the server and
#   guestd), the link answers; 6 parallel checksummed TCP streams (3 each way, `streams
#   start`) put packets on at least two pairs of guestd's status; during that traffic
#   a memory hot-plug (new window in server and guestd) and its hot-unplug
#   (MEMORY_INFO(DEL) -> DEL_DONE, window gone) complete, after which every stream
#   still moves packets; stopping the streams shows every md5sum matching; no queue and
#   no device is broken; `down` leaves nothing; no crash in any log.
#
# Every wait is bounded; a step that cannot run because an earlier one failed prints
# `not ok` with the reason. Prints TAP.
#
# Environment: VP_B (or B) build dir (default build); VP_E2E_STEP_TIMEOUT (default 120 s,
# bound of each wait); QEMU: which QEMU (7.2, 10.0, a path; tools/qemu-select). The run
# dir is a fresh /tmp/vp-e2e-pair-mq.XXXXXX; its logs are copied to $VP_B/test-logs/pair-mq/
# (pair-mq-$VP_E2E_LABEL/ when tests/run sets that label) at the end.
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
export VP_B=$B
T=${VP_E2E_STEP_TIMEOUT:-120}
PAIRS=4

# shellcheck source=../tap.sh
. tests/tap.sh
# shellcheck source=pair-lib.sh
. tests/e2e/pair-lib.sh
tap_plan 10
pair_setup pair-mq

# Packets per queue pair in guestd's status ("p0 p1 p2 p3": receiveq 2p + transmitq
# 2p+1 of the first frontend), and what is broken (empty when nothing is).
pair_packets() {
    gd_json | jq -r --argjson n "$PAIRS" '.devices[0].frontends[0].queues as $q |
        [range(0; $n) | . as $p | ([$q[] | select(.index == 2 * $p or .index == 2 * $p + 1) | .packets] | add // 0)] |
        map(tostring) | join(" ")' 2>/dev/null
}
broken_now() {
    gd_json | jq -r '[.devices[] | select(.broken) | "device slot \(.slot): \(.reason)"] +
        [.devices[].frontends[].queues[] | select(.broken) | "queue \(.index)"] | join(", ")' 2>&1
}
# delta "A0 A1.." "B0 B1..": per-pair B - A
delta() {
    local -a xa xb
    read -ra xa <<<"$1"; read -ra xb <<<"$2"
    local i res=()
    for ((i = 0; i < PAIRS; i++)); do res+=($(( ${xb[i]:-0} - ${xa[i]:-0} ))); done
    echo "${res[*]}"
}
# pairs_moving BASE MIN: at least two pairs have MIN packets more than in BASE
# (sets $now and $moved for the messages)
pairs_moving() {
    local base=$1 min=$2 d n=0
    now=$(pair_packets)
    [ -n "$now" ] || return 1
    moved=$(delta "$base" "$now")
    for d in $moved; do [ "$d" -ge "$min" ] && n=$((n + 1)); done
    [ "$n" -ge 2 ]
}
fmt_pairs() { local i=0 d s=''; for d in $1; do s="$s${s:+, }pair $i: $d"; i=$((i + 1)); done; echo "$s"; }

state() {
    echo "server: $(srv_json | jq -c '{connections, devices: [.devices[] | {slot, status, bar_size, generation, windows, frontends, counters}]}' 2>&1)"
    echo "guestd: $(gd_json | jq -c '{datapath, devices: [.devices[] | {slot, status, broken, reason, windows, frontends: [.frontends[] | {device_id, nvirtqs, queues: [.queues[]? | {index, worker, broken, packets}]}]}]}' 2>&1)"
    echo "client.log: $(tail -n 4 "$run/client.log" 2>/dev/null | tr '\n' ';')"
}

# 1. up with 4 queue pairs
t0=$(now_ms)
if out=$("${pair[@]}" up --queues $PAIRS --smp 2 --dev-smp 2 --timeout "$T" 2>&1); then
    nic=$(grep -o 'virtio-net-pci,[^ ]*' "$run/drv.cmdline")
    ok "pair up with $PAIRS queue pairs: driver VM 2 vCPUs, $nic; device VM 2 vCPUs, guestd workers $(gd '.datapath.workers') ($(secs "$t0") s, $(. "$run/env"; echo "QEMU $PAIR_QEMU_VERSION, accel $PAIR_ACCEL"))"
else
    blocked="the pair did not come up (case 1)"
    not_ok "pair up with $PAIRS queue pairs" "$out"
fi

# 2. ethtool -L eth0 combined 4: all pairs enabled, the device re-registered with 8 virtqueues
c2="ethtool -L eth0 combined $PAIRS: 2*$PAIRS virtqueues in server and guestd, link answers"
all_vqs() {   # the server's device and guestd both have 2*PAIRS virtqueues
    [ "$(srv '.devices[0].frontends[0].nvirtqs')" = $((2 * PAIRS)) ] &&
    [ "$(gd '.devices[0].frontends[0].nvirtqs')" = $((2 * PAIRS)) ]
}
if need_pair "$c2"; then
    t0=$(now_ms)
    before=$("${pair[@]}" exec drv --timeout 20 -- 'ethtool -l eth0' 2>&1 | awk '/^Combined:/ { print $2 }' | tr '\n' ' ')
    out=$("${pair[@]}" exec drv --timeout 30 -- "ethtool -L eth0 combined $PAIRS && ethtool -l eth0 && ls /sys/class/net/eth0/queues" 2>&1)
    cur=$(awk '/^Combined:/ { print $2 }' <<<"$out" | tail -n 1)
    nq=$(grep -oE '(rx|tx)-[0-9]+' <<<"$out" | wc -l)
    if [ "$cur" != "$PAIRS" ] || [ "$nq" != $((2 * PAIRS)) ]; then
        not_ok "$c2" "ethtool: $out"; blocked="ethtool -L failed (case 2)"
    elif ! wait_for "$T" all_vqs; then
        not_ok "$c2" "server or guestd does not show $((2 * PAIRS)) virtqueues" "$(state)"; blocked="no multi-queue device (case 2)"
    elif ! "${pair[@]}" wait-link --timeout "$T" >/dev/null 2>&1; then
        not_ok "$c2" "no ping reply after ethtool -L" "$(state)"; blocked="no link after ethtool -L (case 2)"
    else
        ok "ethtool -l eth0 before: max/current combined $before(the kernel's own choice with 2 vCPUs); after -L: $cur, $nq rx/tx queues in sysfs; client: '$(grep -o 'DEVICE_INFO(ADD) of net 1 with [0-9]* virtqueue(s)' "$run/client.log" | tail -n 1)'; server: $(srv '.devices[0].frontends[0].nvirtqs') virtqueues, guestd: $(gd '.devices[0].frontends[0].nvirtqs'), workers $(gd '[.devices[0].frontends[0].queues[].worker] | unique | map(tostring) | join(",")'); link answers ($(secs "$t0") s)"
    fi
fi

# 3. parallel checksummed streams: packets on at least two pairs
c3="6 parallel streams (3 each way): packets on at least two queue pairs"
streaming=0
if need_pair "$c3"; then
    base=$(pair_packets)
    t0=$(now_ms)
    if ! out=$("${pair[@]}" streams start --streams 3 2>&1); then
        not_ok "$c3" "$out" "$(state)"; blocked="the streams did not start (case 3)"
    else
        streaming=1
        if wait_for "$T" pairs_moving "$base" 100; then
            ok "6 streams running (3 each way); packets per pair after $(secs "$t0") s: $(fmt_pairs "$moved")"
        else
            not_ok "$c3" "packets per pair since the start: $(fmt_pairs "${moved:-?}")" "$(state)"
        fi
    fi
fi

# 4-5. memory hot-plug and hot-unplug during that traffic
w0=$(srv '.devices[0].windows | length')
dimm=
c4="memory hot-plug 256 MiB during the traffic: new window in server and guestd"
if need_pair "$c4"; then
    t0=$(now_ms)
    if ! [[ "$w0" =~ ^[0-9]+$ ]]; then
        not_ok "$c4" "no device in vhost-pci-ctl before the hot-plug" "$(state)"
    elif ! dimm=$("${pair[@]}" hotplug-mem 256M 2>&1); then
        not_ok "$c4" "$dimm" "$(state)"; dimm=
    elif wait_for "$T" windows_are $((w0 + 1)); then
        b=$(broken_now)
        if [ -z "$b" ]; then
            ok "memory hot-plug 256 MiB ($dimm) during the streams: windows $w0 -> $((w0 + 1)) in server and guestd, nothing broken ($(secs "$t0") s)"
        else
            not_ok "$c4" "broken after the hot-plug: $b" "$(state)"
        fi
    else
        not_ok "$c4" "windows before: $w0" "$(state)"
    fi
fi
c5="hot-unplug during the traffic: MEMORY_INFO(DEL) -> DEL_DONE, window gone, no broken queue"
if need_pair "$c5"; then
    t0=$(now_ms)
    if [ -z "$dimm" ]; then
        not_ok "$c5" "no hot-plugged dimm (case 4 failed)"
    elif ! why=$(pair_unplug "$dimm" "$w0"); then
        not_ok "$c5" "$why"
    elif b=$(broken_now) && [ -n "$b" ]; then
        not_ok "$c5" "broken after the hot-unplug: $b" "$(state)"
    else
        ok "hot-unplug $dimm during the streams: DEVICE_DELETED, MEMORY_INFO(DEL) -> DEL_DONE, windows back to $w0, nothing broken ($(secs "$t0") s)"
    fi
fi

# 6. the traffic goes on after the hot-plug cycle, on at least two pairs
c6="traffic continues after the hot-plug cycle on at least two pairs"
if need_pair "$c6"; then
    if [ "$streaming" != 1 ]; then
        not_ok "$c6" "no streams (case 3 failed)"
    else
        t0=$(now_ms)
        base=$(pair_packets)
        if wait_for "$T" pairs_moving "$base" 50; then
            ok "after the unplug, within $(secs "$t0") s: $(fmt_pairs "$moved") more packets"
        else
            not_ok "$c6" "packets per pair since the unplug: $(fmt_pairs "${moved:-?}")" "$(state)"
        fi
    fi
fi

# 7. every stream ends with matching checksums
c7="every stream's md5sum matches on both ends"
if need_pair "$c7"; then
    if [ "$streaming" != 1 ]; then
        not_ok "$c7" "no streams (case 3 failed)"
    elif out=$("${pair[@]}" streams stop --timeout 90 2>&1); then
        ok "streams stopped: $(tr '\n' ';' <<<"$out")"
    else
        not_ok "$c7" "$out" "$(state)"
    fi
fi

# 8. guestd at the end: nothing broken, the per-pair totals
c8="guestd after the traffic: no broken queue or device, packets on at least two pairs"
if need_pair "$c8"; then
    # (n is tap.sh's result counter)
    totals=$(pair_packets) b=$(broken_now) used=0
    for d in $totals; do [ "$d" -gt 0 ] && used=$((used + 1)); done
    if [ -n "$totals" ] && [ -z "$b" ] && [ "$used" -ge 2 ]; then
        perq=$(gd '[.devices[0].frontends[0].queues[] | "\(.index):\(.packets)"] | join(" ")')
        ok "guestd: no broken queue or device; packets since ethtool -L per pair: $(fmt_pairs "$totals"); per virtqueue (index:packets): $perq"
    else
        not_ok "$c8" "broken: ${b:-none}" "packets per pair: ${totals:-?}" "$(state)"
    fi
fi

# 9. down: nothing left
pair_case_down

# 10. nobody crashed: no sanitizer report, assertion or segfault in any log, guestd never exited
pair_case_no_crash
