#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # run, pair, blocked: tests/e2e/pair-lib.sh
# e2e: the whole of vhost-pci with real QEMU: a device VM with vhost-pci-server
# (--device-host qemu) and a driver VM with vhost-pci-client, started by
# tools/vhost-pci-pair. The pair is booted ONCE and every case runs against it in turn:
#
#   ping both ways; a bulk transfer each way whose md5sum matches on both ends;
#   driver VM memory hot-plug (object-add memory-backend-memfd + device_add pc-dimm):
#   a new window in the server's device and in guestd's view of the device VM, traffic
#   continues; hot-unplug (DEVICE_DELETED) removes the window again; a client daemon
#   restart (the server destroys the device and builds a new one) leaves the device
#   VM's QEMU running, also when the fd numbers the unplug freed are reused in it at
#   once (make soak's crash), and traffic resumes; the server killed (SIGKILL) during
#   checksummed streams both ways and started again: it removes the functions, chardev,
#   memory backend and fd the killed one left in the device VM, the client re-establishes
#   the device, the streams' md5s match; hot-plug beyond the logical BAR
#   clones the device (new control function, the old one unplugged) and traffic
#   continues; a 384 MiB DIMM (not a power of two) becomes two windows, 256 + 128 MiB,
#   on a QEMU with memory-backend-file's offset (10.0: traffic, hot-unplug removes both),
#   and on 7.2 gets ADD_FAIL, the device VM's QEMU stays up and the driver VM's QEMU gets
#   a failure reply without losing its network (also across a virtio-net reset); shutting the driver VM down makes the server destroy the device
#   and the device VM sees the functions unplugged; `down` leaves no process and no
#   socket; no log has a crash or sanitizer report. Every check reads real state:
#   vhost-pci-ctl --json (server), guestd's status socket in the device VM (through
#   the agent), sysfs in the guests, QMP, the server's log lines for DEL_DONE.
#
# A step that cannot run because an earlier one failed prints `not ok` with the
# reason (nothing here waits without a bound). Prints TAP.
#
# Environment: VP_B (or B) build dir (default build); VP_E2E_STEP_TIMEOUT (default 120 s,
# bound of each wait). The run dir is a fresh /tmp/vp-e2e-pair.XXXXXX; its logs are
# copied to $VP_B/test-logs/pair/ (pair-$VP_E2E_LABEL/ when tests/run sets that label,
# e.g. qemu-10.0.2) at the end. QEMU: which QEMU (7.2, 10.0, a path; tools/qemu-select).
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
export VP_B=$B
T=${VP_E2E_STEP_TIMEOUT:-120}

# shellcheck source=../tap.sh
. tests/tap.sh
# shellcheck source=pair-lib.sh
. tests/e2e/pair-lib.sh
tap_plan 17
pair_setup pair

# State snapshot for diagnostics.
state() {
    echo "server: $(srv_json | jq -c '{connections, counters, devices: [.devices[] | {slot, status, driver_ok, bar_size, generation, windows, counters}]}' 2>&1)"
    echo "guestd: $(gd_json | jq -c '{devices: [.devices[] | {slot, status, broken, reason, bar_size, generation, windows, regions: (.regions | length), frontends: [.frontends[] | {device_id, queues: [.queues[]? | {index, broken, packets}]}]}]}' 2>&1)"
}
traffic() {   # ping both ways + 1 MiB each way with checksums
    "${pair[@]}" ping -c 2 && "${pair[@]}" iperf --mb 1
}

# The device VM's 1af4:1110 functions (slot.function list), from its sysfs.
dev_functions() {
    "${pair[@]}" exec dev --timeout 15 -- '
        for d in /sys/bus/pci/devices/*; do
            [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1110 ] && echo "${d##*/}"
        done; true' 2>/dev/null | tr '\n' ' '
}

# 1. up
t0=$(now_ms)
if out=$("${pair[@]}" up --timeout "$T" 2>&1); then
    ok "pair up: device VM + server, client + driver VM, link answers ($(secs "$t0") s, $(. "$run/env"; echo "QEMU $PAIR_QEMU_VERSION, accel $PAIR_ACCEL"))"
else
    blocked="the pair did not come up (case 1)"
    not_ok "pair up" "$out"
fi

# 2-3. ping both ways
if need_pair "ping driver VM -> device VM"; then
    out=$("${pair[@]}" exec drv --timeout 30 -- 'ping -c 3 -W 2 10.77.0.1' 2>&1)
    if grep -qE ' [1-3] packets received' <<<"$out"; then
        ok "ping driver VM -> device VM: $(grep -o '[0-9]* packets received' <<<"$out")"
    else not_ok "ping driver VM -> device VM" "$out" "$(state)"; fi
fi
if need_pair "ping device VM -> driver VM"; then
    out=$("${pair[@]}" exec dev --timeout 30 -- 'ping -c 3 -W 2 10.77.0.2' 2>&1)
    if grep -qE ' [1-3] packets received' <<<"$out"; then
        ok "ping device VM -> driver VM: $(grep -o '[0-9]* packets received' <<<"$out")"
    else not_ok "ping device VM -> driver VM" "$out" "$(state)"; fi
fi

# 4-5. bulk transfer with matching checksums
for dir in device driver; do
    if need_pair "bulk transfer to the $dir VM, md5 matches"; then
        if out=$("${pair[@]}" iperf --mb 4 --to $dir 2>&1); then ok "bulk transfer: $out"
        else not_ok "bulk transfer to the $dir VM, md5 matches" "$out" "$(state)"; fi
    fi
done

# 6-8. hot-plug 256 MiB: a new window; traffic; hot-unplug removes it
w0=$(srv '.devices[0].windows | length')
g0=$(srv '.devices[0].generation')
slot0=$(srv '.devices[0].slot')
bar0=$(srv '.devices[0].bar_size')
dimm=
if need_pair "memory hot-plug 256 MiB: new window in server and device VM"; then
    t0=$(now_ms)
    if ! [[ "$w0" =~ ^[0-9]+$ ]]; then
        not_ok "memory hot-plug 256 MiB: new window in server and device VM" "no device in vhost-pci-ctl before the hot-plug" "$(state)"
    elif ! dimm=$("${pair[@]}" hotplug-mem 256M 2>&1); then
        not_ok "memory hot-plug 256 MiB: new window in server and device VM" "$dimm"; dimm=
    elif wait_for "$T" windows_are $((w0 + 1)); then
        ok "memory hot-plug 256 MiB ($dimm): windows $w0 -> $((w0 + 1)) in server and guestd, generation $g0 -> $(srv '.devices[0].generation'), same slot $(srv '.devices[0].slot') ($(secs "$t0") s)"
    else
        not_ok "memory hot-plug 256 MiB: new window in server and device VM" "windows before: $w0" "$(state)"
    fi
fi
if need_pair "traffic after the hot-plug"; then
    if out=$(traffic 2>&1); then ok "traffic after the hot-plug: $(tr '\n' ';' <<<"$out")"
    else not_ok "traffic after the hot-plug" "$out" "$(state)"; fi
fi
if need_pair "hot-unplug removes the window after DEL_DONE"; then
    t0=$(now_ms)
    if [ -z "$dimm" ]; then
        not_ok "hot-unplug removes the window after DEL_DONE" "no hot-plugged dimm (case 6 failed)"
    elif why=$(pair_unplug "$dimm" "$w0"); then
        ok "hot-unplug $dimm: DEVICE_DELETED, MEMORY_INFO(DEL) -> DEL_DONE (server.log), windows back to $w0 in server and guestd ($(secs "$t0") s)"
    else
        not_ok "hot-unplug removes the window after DEL_DONE" "$why"
    fi
fi

# 9-10 run on the healthy pair, before the clone and ADD_FAIL cases (11-13) that can
# leave its data path broken: they test the client restart, not what came before.
no_device() {
    [ "$(srv '.devices | length')" = 0 ] && [ -z "$(dev_functions | tr -d ' ')" ] &&
    [ "$(gd '.devices | length')" = 0 ]
}
device_back() {   # the server and guestd have one device again, with windows mapped
    [ "$(srv '.devices | length')" = 1 ] && [ "$(gd '.devices | length')" = 1 ] &&
    [ "$(srv '.devices[0].windows | length')" -ge 1 ] 2>/dev/null &&
    [ "$(gd "[.devices[0].windows[] | select(.mapped)] | length")" = "$(srv '.devices[0].windows | length')" ]
}
dev_running() {
    [[ "$("${pair[@]}" qmp dev --timeout 10 '{"execute":"query-status"}' 2>&1)" == *'"status": "running"'* ]]
}

# 9. client restart (make soak's crash): the server destroys the device (its last
#    connection closed) and builds a new one at once; the driver VM's QEMU reconnects.
c9="client restart: device destroyed and rebuilt, device VM QEMU up, traffic"
if need_pair "$c9"; then
    t0=$(now_ms)
    destroys0=$(grep -c 'destroying (its last client connection closed)' "$run/server.log")
    if ! out=$("${pair[@]}" restart-client 2>&1) || ! "${pair[@]}" wait-link --timeout "$T" >/dev/null 2>&1; then
        not_ok "$c9" "${out:-no link after the restart}" "$(state)"
    elif ! dev_running || ! wait_for "$T" device_back; then
        not_ok "$c9" "device VM: $("${pair[@]}" qmp dev --timeout 10 '{"execute":"query-status"}' 2>&1)" "$(state)"
    elif ! out=$(traffic 2>&1); then
        not_ok "$c9" "$out" "$(state)"
    elif [ "$(grep -c 'destroying (its last client connection closed)' "$run/server.log")" -le "$destroys0" ]; then
        not_ok "$c9" "no new 'destroying (its last client connection closed)' in server.log"
    else
        ok "$c9: server destroyed and rebuilt the device (slot $(srv '.devices[0].slot')), traffic: $(tr '\n' ';' <<<"$out") ($(secs "$t0") s)"
    fi
fi

# 10. the same, deterministically: once the old device's functions are unplugged, the
#     device VM's QEMU opens fds under every number the unplug freed (memory backends:
#     memfds, always readable). QEMU's ivshmem leaves a main-loop handler behind for
#     each own-vector eventfd it was given; a reused number then runs it on freed memory
#     (SIGSEGV: what make soak hit at random). The server gives it none (devhost_qemu.c).
c10="client stopped, device unplugged, its fd numbers reused in the device VM's QEMU: QEMU up; client back, ping"
if need_pair "$c10"; then
    t0=$(now_ms)
    fill() {   # object-add (or object-del with "del") 16 small memfd backends, one QMP session
        local i cmds=() out
        for i in $(seq 1 16); do
            if [ "$1" = add ]; then
                cmds+=("{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"memory-backend-memfd\",\"id\":\"vp-fill$i\",\"size\":1048576,\"share\":true}}")
            else
                cmds+=("{\"execute\":\"object-del\",\"arguments\":{\"id\":\"vp-fill$i\"}}")
            fi
        done
        out=$("${pair[@]}" qmp dev --timeout 30 "${cmds[@]}" 2>&1) &&
            [ "$(grep -c '"return"' <<<"$out")" -ge 16 ] && ! grep -q '"error"' <<<"$out"
    }
    if ! out=$("${pair[@]}" stop-client 2>&1); then
        not_ok "$c10" "$out"
    elif ! wait_for "$T" no_device; then
        not_ok "$c10" "the device was not destroyed after the client stopped" "$(state)" "device VM functions: $(dev_functions)"
    elif ! fill add || ! dev_running || ! dev_running; then
        not_ok "$c10" "the device VM's QEMU died once fd numbers were reused: $("${pair[@]}" qmp dev --timeout 5 '{"execute":"query-status"}' 2>&1)" \
            "dev.qemu.log: $(tail -n 3 "$run/dev.qemu.log")"
        blocked="the device VM's QEMU died (case 10)"
    elif ! fill del || ! out=$("${pair[@]}" start-client 2>&1) || ! "${pair[@]}" wait-link --timeout "$T" >/dev/null 2>&1 ||
         ! wait_for "$T" device_back; then
        not_ok "$c10" "${out:-} no device or link after the client came back" "$(state)"
    elif ! out=$("${pair[@]}" ping -c 2 2>&1); then
        not_ok "$c10" "$out" "$(state)"
    else
        ok "$c10: 16 memfds in the freed fd numbers, QEMU running; device rebuilt at slot $(srv '.devices[0].slot'), ping: $(tr '\n' ';' <<<"$out") ($(secs "$t0") s)"
    fi
fi

# 10b. server restart (issue 12 item 6): the server is killed (SIGKILL) while
#      checksummed streams run both ways; its functions, chardev, memory backend and
#      add-fd fd stay in the device VM's QEMU. A new server with the same options
#      removes them (device_del, DEVICE_DELETED, chardev-remove, object-del, remove-fd)
#      before it listens; the client reconnects with backoff and re-establishes its
#      device; the streams finish with matching md5s (TCP retransmits across the gap).
c10b="server killed during checksummed streams and restarted: leftovers removed, one device again, streams' md5 match"
sender_rounds() {   # stream I's rounds so far, in VM V
    "${pair[@]}" exec "$2" --timeout 10 -- "cat /tmp/vps.$1.rounds 2>/dev/null || echo 0" 2>/dev/null
}
streams_moving() {  # both streams (0: driver -> device, 1: device -> driver) sent >= $1 rounds
    local a b
    a=$(sender_rounds 0 drv) b=$(sender_rounds 1 dev)
    [[ "$a" =~ ^[0-9]+$ ]] && [[ "$b" =~ ^[0-9]+$ ]] && [ "$a" -ge "$1" ] && [ "$b" -ge "$1" ]
}
# Ours in the device VM's QEMU, from its admin QMP: "devices chardevs backends fds".
qemu_ours() {
    "${pair[@]}" qmp dev --timeout 10 '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}' \
        '{"execute":"query-chardev"}' '{"execute":"qom-list","arguments":{"path":"/objects"}}' \
        '{"execute":"query-fdsets"}' 2>/dev/null | jq -rs '[
          ([.[0].return[] | select(.name | test("^vpci-(ctl|win)"))] | length),
          ([.[1].return[] | select(.label | test("^vpci-chr"))] | length),
          ([.[2].return[] | select(.name | test("^vpci-mem"))] | length),
          ([.[3].return[].fds[] | select((.opaque // "") | test("^vhost-pci "))] | length)] | join(" ")' 2>/dev/null
}
one_clean_device() {   # one device, windows mapped, and exactly its functions in QEMU
    local w
    device_back || return 1
    w=$(srv '.devices[0].windows | length')
    [ "$(qemu_ours)" = "$((w + 1)) 1 $w $w" ] &&
    [ "$(wc -w <<<"$(dev_functions)")" = $((w + 1)) ]
}
if need_pair "$c10b"; then
    t0=$(now_ms)
    before=$(qemu_ours)
    if ! out=$("${pair[@]}" streams start --streams 1 --to both 2>&1); then
        not_ok "$c10b" "$out"
    elif ! wait_for "$T" streams_moving 8; then
        not_ok "$c10b" "the streams did not get going (512 KiB each way)" "$(state)"
        "${pair[@]}" streams stop --timeout 10 >/dev/null 2>&1
    else
        r0=$(sender_rounds 0 drv) r1=$(sender_rounds 1 dev)
        "${pair[@]}" kill-server >/dev/null 2>&1
        left=$(qemu_ours) fns_left=$(dev_functions)
        if ! out=$("${pair[@]}" start-server --timeout "$T" 2>&1); then
            not_ok "$c10b" "$out"
            "${pair[@]}" streams stop --timeout 10 >/dev/null 2>&1
        elif ! wait_for "$T" one_clean_device; then
            not_ok "$c10b" "no single clean device after the restart: QEMU has (devices chardevs backends fds) '$(qemu_ours)', was '$left' after the kill" \
                "device VM functions: $(dev_functions)" "$(state)" "server.log: $(grep -E 'WARN|CRIT|leftover|earlier server|ADD_FAIL' "$run/server.log" | tail -n 6)"
            "${pair[@]}" streams stop --timeout 10 >/dev/null 2>&1
        elif ! dev_running; then
            not_ok "$c10b" "the device VM's QEMU is not running: $("${pair[@]}" qmp dev --timeout 5 '{"execute":"query-status"}' 2>&1)" "dev.qemu.log: $(tail -n 3 "$run/dev.qemu.log")"
            blocked="the device VM's QEMU died (case 10b)"
        elif ! out=$("${pair[@]}" streams stop --timeout "$T" 2>&1); then
            not_ok "$c10b" "$out" "$(state)"
        else
            ok "$c10b: killed at $r0/$r1 rounds of 64 KiB; QEMU had (devices chardevs backends fds) '$before' before, '$left' after the kill (functions $fns_left); new server: $(grep -h 'leftovers of an earlier server' "$run/server.log" | sed 's/^.*server: //'); now '$(qemu_ours)', functions $(dev_functions); $(tr '\n' ';' <<<"$out") ($(secs "$t0") s)"
        fi
    fi
fi

# 11-12. hot-plug beyond the logical BAR: clone (of the device cases 9-10 rebuilt,
# when they did)
s=$(srv '.devices[0].slot') b=$(srv '.devices[0].bar_size')
[[ "$s" =~ ^[0-9]+$ ]] && [[ "$b" =~ ^[0-9]+$ ]] && slot0=$s bar0=$b
cloned() {
    local c s
    c=$(srv '.devices[0].counters.clones') s=$(srv '.devices[0].slot')
    [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -ge 1 ] && [ "$s" != "$slot0" ] &&
    [ "$(srv '.devices | length')" = 1 ] &&
    [ "$(gd '.devices | length')" = 1 ] &&
    [ "$(gd '.devices[0].bar_size')" = "$(srv '.devices[0].bar_size')" ] &&
    [[ " $(dev_functions) " != *" $old_fn "* ]]
}
if need_pair "hot-plug beyond the logical BAR clones the device"; then
    t0=$(now_ms)
    # bar_size is pow2ceil(2 x RAM); a window of that size cannot be placed next to RAM.
    big=$(( bar0 > 0 ? bar0 : 1 << 30 ))
    old_fn=$(printf '0000:00:%02x.%d' $((slot0 >> 3)) $((slot0 & 7)))
    if ! out=$("${pair[@]}" hotplug-mem "$big" 2>&1); then
        not_ok "hot-plug beyond the logical BAR clones the device" "$out"
    elif wait_for "$T" cloned; then
        fns=$(dev_functions)
        ok "hot-plug $((big >> 20)) MiB ($out) beyond bar_size $bar0: cloned, slot $slot0 -> $(srv '.devices[0].slot') (old control function $old_fn gone from the device VM), bar_size $(srv '.devices[0].bar_size'), device VM functions now: $fns ($(secs "$t0") s)"
    else
        not_ok "hot-plug beyond the logical BAR clones the device" "slot before $slot0, bar_size before $bar0" "$(state)" "device VM functions: $(dev_functions)"
    fi
fi
if need_pair "traffic after the clone"; then
    if out=$(traffic 2>&1); then ok "traffic after the clone: $(tr '\n' ';' <<<"$out")"
    else not_ok "traffic after the clone" "$out" "$(state)"; fi
fi

# 13. a memory file that is not a power of two (a 384 MiB DIMM). What happens depends on
#     the QEMU (tools/qemu-select --features: VP_QEMU_FILE_OFFSET, memory-backend-file's
#     `offset`, 8.1 and later):
#   - with it (10.0): the server serves the file as two windows (256 MiB + 128 MiB, back
#     to back in the logical BAR), both in the server's and guestd's JSON, mapped;
#     traffic continues; its hot-unplug removes both windows (DEL_DONE).
#   - without it (7.2): ADD_FAIL, the device VM's QEMU stays up; the driver VM's QEMU gets
#     a failure reply to ADD_MEM_REG (it logs "vhost_set_mem_table failed" and keeps its
#     vhost device running), traffic goes on, and a reset of the driver VM's virtio-net
#     with that DIMM still plugged (QEMU's vhost_dev_start offers the region again) still
#     brings the link back.
VP_QEMU_FILE_OFFSET=0
[ -f "$run/env" ] && eval "$(tools/qemu-select --features "$(. "$run/env"; echo "$PAIR_QEMU_VERSION")" 2>/dev/null)"
if [ "${VP_QEMU_FILE_OFFSET:-0}" = 1 ]; then
c13="384 MiB DIMM: two windows (256 + 128 MiB) in server and device VM, traffic, hot-unplug removes both"
dimm_bytes=$((384 << 20))
# The DIMM's windows as "devfn:bar_offset:size" lines, sorted by BAR offset, from the
# server (file_size identifies them) and from guestd (same devfn, mapped).
split_srv() { srv "[.devices[0].windows[] | select(.file_size == $dimm_bytes)] | sort_by(.bar_offset) | .[] | \"\(.devfn):\(.bar_offset):\(.size)\""; }
split_ok() {
    local s g
    s=$(split_srv) || return 1
    [ "$(wc -l <<<"$s")" = 2 ] || return 1
    windows_are $((w1 + 2)) || return 1
    g=$(gd "[.devices[0].windows[] | select(.mapped)] | .[] | \"\(.devfn):\(.bar_offset):\(.size)\"") || return 1
    while IFS= read -r l; do grep -qx "$l" <<<"$g" || return 1; done <<<"$s"
}
if need_pair "$c13"; then
    t0=$(now_ms)
    w1=$(srv '.devices[0].windows | length')
    mdels0=$(grep -c 'MEMORY_INFO(DEL) -> DEL_DONE' "$run/server.log")
    if ! [[ "$w1" =~ ^[0-9]+$ ]]; then
        not_ok "$c13" "no device in vhost-pci-ctl before the hot-plug" "$(state)"
    elif ! dimm=$("${pair[@]}" hotplug-mem 384M 2>&1); then
        not_ok "$c13" "$dimm"; dimm=
    elif ! wait_for "$T" split_ok; then
        not_ok "$c13" "windows before: $w1; DIMM windows (server): $(split_srv | tr '\n' ' ')" \
            "$(grep -h 'ADD_FAIL' "$run/server.log" | tail -n 2)" "$(state)"
    else
        pieces=$(split_srv | tr '\n' ' ')
        # 256 MiB then 128 MiB, the second right after the first, each aligned to its size.
        read -r p1 p2 <<<"$pieces"
        o1=${p1#*:}; s1=${o1#*:}; o1=${o1%:*}
        o2=${p2#*:}; s2=${o2#*:}; o2=${o2%:*}
        st=$("${pair[@]}" qmp dev --timeout 10 '{"execute":"query-status"}' 2>&1)
        if [ "$s1" != $((256 << 20)) ] || [ "$s2" != $((128 << 20)) ] ||
           [ "$o2" != $((o1 + s1)) ] || [ $((o1 % s1)) != 0 ] || [ $((o2 % s2)) != 0 ]; then
            not_ok "$c13" "DIMM windows not 256 + 128 MiB back to back, aligned: $pieces"
        elif [[ "$st" != *'"status": "running"'* ]]; then
            not_ok "$c13" "device VM query-status: $st" "$(state)"
        elif ! out=$(traffic 2>&1); then
            not_ok "$c13" "traffic with the split DIMM plugged: $out" "$(state)"
        elif ! out2=$("${pair[@]}" hotplug-mem --remove "$dimm" 2>&1); then
            not_ok "$c13" "hot-unplug $dimm: $out2" "$(state)"
        elif ! wait_for "$T" windows_are "$w1" || [ -n "$(split_srv)" ]; then
            not_ok "$c13" "after the hot-unplug: windows not back to $w1" "$(state)"
        elif [ "$(grep -c 'MEMORY_INFO(DEL) -> DEL_DONE' "$run/server.log")" -le "$mdels0" ]; then
            not_ok "$c13" "no new 'MEMORY_INFO(DEL) -> DEL_DONE' in server.log"
        else
            ok "384 MiB DIMM ($dimm) on QEMU with memory-backend-file offset: windows $w1 -> $((w1 + 2)) (devfn:bar_offset:size $pieces) in server and guestd, all mapped; traffic OK ($(tr '\n' ';' <<<"$out" | cut -c1-100)); hot-unplug: DEL_DONE, windows back to $w1 ($(secs "$t0") s)"
        fi
        dimm=
    fi
    [ -n "$dimm" ] && "${pair[@]}" hotplug-mem --remove "$dimm" >/dev/null 2>&1
fi
else
c13="non-power-of-two memory: ADD_FAIL, QEMUs stay up, driver VM networking survives"
reset_drv_net() {   # unbind + bind virtio_net in the driver VM, address again
    "${pair[@]}" exec drv --timeout 30 -- 'd=$(basename $(readlink /sys/class/net/eth0/device)) &&
        echo $d > /sys/bus/virtio/drivers/virtio_net/unbind && sleep 1 &&
        echo $d > /sys/bus/virtio/drivers/virtio_net/bind && sleep 1 &&
        ip link set eth0 up && ip addr add 10.77.0.2/24 dev eth0'
}
if need_pair "$c13"; then
    w1=$(srv '.devices[0].windows | length')
    # Offline in the guest: it never puts data there (the device VM cannot reach it).
    if ! dimm=$("${pair[@]}" hotplug-mem 384M --no-online 2>&1); then
        not_ok "$c13" "$dimm"
    elif wait_for 30 grep -q 'ADD_FAIL.*not a power of two' "$run/server.log"; then
        sleep 2
        st=$("${pair[@]}" qmp dev --timeout 10 '{"execute":"query-status"}' 2>&1)
        st2=$("${pair[@]}" qmp drv --timeout 10 '{"execute":"query-status"}' 2>&1)
        if [[ "$st" != *'"status": "running"'* ]] || [[ "$st2" != *'"status": "running"'* ]] ||
           [ "$(srv '.devices[0].windows | length')" != "$w1" ]; then
            not_ok "$c13" "device VM query-status: $st" "driver VM query-status: $st2" "$(state)"
        elif ! grep -q 'size 0x18000000 failed: .*(the frontend gets a failure reply' "$run/client.log" ||
             ! grep -q 'vhost_set_mem_table failed' "$run/drv.qemu.log"; then
            not_ok "$c13" "no failure reply to ADD_MEM_REG seen in client.log / drv.qemu.log" \
                "$(tail -n 5 "$run/client.log")" "drv.qemu.log: $(tail -n 3 "$run/drv.qemu.log")"
        elif ! out=$(traffic 2>&1); then
            not_ok "$c13" "traffic with the refused DIMM plugged: $out" "$(state)"
        elif ! r=$(reset_drv_net 2>&1) || ! "${pair[@]}" wait-link --timeout 30 >/dev/null 2>&1 ||
             ! out2=$(traffic 2>&1); then
            not_ok "$c13" "after a virtio-net reset in the driver VM: ${r:-} ${out2:-no link}" \
                "drv.qemu.log: $(tail -n 3 "$run/drv.qemu.log")" "$(state)"
        else
            ok "384 MiB file refused: '$(grep -h 'ADD_FAIL.*not a power of two' "$run/server.log" | head -n1 | sed 's/^.*: client [^:]*: //' | cut -c1-120)'; QEMUs running, windows still $w1; driver QEMU: '$(grep -m1 'vhost_set_mem_table failed' "$run/drv.qemu.log")'; traffic OK, and again after a virtio-net reset"
        fi
    else
        not_ok "$c13" "no 'ADD_FAIL ... not a power of two' in server.log within 30 s" "$(state)"
    fi
    "${pair[@]}" hotplug-mem --remove "$dimm" >/dev/null 2>&1
fi
fi

# 14. driver VM shutdown: DEVICE_INFO(DEL), the server destroys the device, functions unplugged
if need_pair "driver VM shutdown: device destroyed, functions unplugged in the device VM"; then
    t0=$(now_ms)
    drv_pid=$(cat "$run/drv.pid" 2>/dev/null)
    dels0=$(grep -c 'DEVICE_INFO(DEL) -> DEL_DONE' "$run/server.log")
    "${pair[@]}" exec drv --timeout 5 -- 'poweroff' >/dev/null 2>&1
    gone() { [ ! -d "/proc/$drv_pid" ] || grep -q '^State:.*Z' "/proc/$drv_pid/status" 2>/dev/null; }
    if ! wait_for 60 gone; then
        not_ok "driver VM shutdown: device destroyed, functions unplugged in the device VM" "driver VM QEMU ($drv_pid) still running 60 s after poweroff"
    elif ! wait_for "$T" no_device; then
        not_ok "driver VM shutdown: device destroyed, functions unplugged in the device VM" "$(state)" "device VM functions: $(dev_functions)"
    elif [ "$(grep -c 'DEVICE_INFO(DEL) -> DEL_DONE' "$run/server.log")" -gt "$dels0" ]; then
        ok "driver VM powered off: DEVICE_INFO(DEL) -> DEL_DONE (server.log), server has no device, device VM has no 1af4:1110 function, guestd no device ($(secs "$t0") s)"
    else
        not_ok "driver VM shutdown: device destroyed, functions unplugged in the device VM" "no new 'DEVICE_INFO(DEL) -> DEL_DONE' in server.log: $(grep 'DEVICE_INFO' "$run/server.log" | tail -n 3)"
    fi
fi

# 15. down: nothing left
pair_case_down

# 16. nobody crashed: no sanitizer report, assertion or segfault in any log, guestd never exited
pair_case_no_crash
