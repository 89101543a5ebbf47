#!/usr/bin/env bash
# e2e: a real driver VM (QEMU 7.2 or 10.0, TCG) uses vhost-pci-client as the vhost-user backend
# of its virtio-net NIC; the device side is vhost-pci-server --device-host local with
# vhost-pci-guestd --bus local on the host (the controlq ACK path is the same as in a
# device VM).
#
# Checks: the guest's virtio-net driver comes up and the daemon gets
# DEVICE_INFO_ACK(ADD_DONE); vhost-pci-ctl --json shows the frontend (net, device_id 1,
# 2 virtqueues) and regions equal to what QEMU sent for its RAM (one 512 MiB memfd
# window); the guest driver serves both queues, and the guest's frames come back to it
# through guestd's loopback endpoint; a pc-dimm hot-add and hot-remove become
# MEMORY_INFO(ADD/DEL); a daemon restart is replayed by QEMU (reconnect, 1 s); QEMU
# quitting takes the frontend and the memory away; SIGTERM stops the daemon cleanly.
# Prints TAP.
#
# Environment: VP_B (or B) build dir (default build); the guest image is $VP_B/guest
# (tools/mkguest, cached). VP_E2E_READY_TIMEOUT (default 120 s). VP_E2E_KEEP=1 keeps the
# run directory (logs of QEMU, the daemon, server and guestd). QEMU: which QEMU (7.2,
# 10.0, a path; tools/qemu-select), default the system's; what depends on its version
# (MSI-X or vectors=0 on virtio-net-pci, reconnect-ms or reconnect) is read from its QMP
# greeting (tools/qemu-select --version / --features).
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
img=$B/guest
ready_timeout=${VP_E2E_READY_TIMEOUT:-120}
vpg=tools/vp-guest

# shellcheck source=../tap.sh
. tests/tap.sh
tap_plan 12

server=$B/server/vhost-pci-server guestd=$B/guest-driver/vhost-pci-guestd
ctl=$B/tools/vhost-pci-ctl client=$B/client/vhost-pci-client
for p in "$server" "$guestd" "$ctl" "$client"; do
    [ -x "$p" ] || skip_rest "$p not built"
done
qemu_bin=$(tools/qemu-select 2>&1) || fail_rest "no QEMU: $qemu_bin"
qemu_ver=$(tools/qemu-select --version "$qemu_bin" 2>&1) || fail_rest "no QMP greeting: $qemu_ver"
eval "$(tools/qemu-select --features "$qemu_ver")"
command -v jq >/dev/null || skip_rest "jq not installed (tools/install-deps)"

run=$(mktemp -d /tmp/vp-e2e-drv.XXXXXX)
pids=()              # everything we started, stopped in reverse order
qemu_pid= client_pid=
stop_pid() {         # $1 = pid; SIGTERM, then SIGKILL; bounded
    local p=$1
    kill -0 "$p" 2>/dev/null || return 0
    kill "$p" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[$i]}"; done
    if [ -n "${VP_E2E_KEEP:-}" ]; then echo "# logs kept in $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
diag_logs() {
    for f in client.log server.log guestd.log qemu.log; do
        echo "# ----- $f -----"; tail -n 40 "$run/$f" 2>/dev/null | sed 's/^/# /'
    done
    echo "# ----- console -----"; tail -c 2000 "$run/console.log" 2>/dev/null | sed 's/^/# /'
}
wait_until() {       # $1 = timeout s, rest: command; polls every 0.1 s
    local t=$1; shift
    local end=$(( $(date +%s%N) / 1000000 + t * 1000 ))
    until "$@"; do
        [ $(( $(date +%s%N) / 1000000 )) -ge "$end" ] && return 1
        sleep 0.1
    done
}
status() { "$ctl" --mgmt "$run/mgmt.sock" status --json 2>/dev/null; }
# jq on this driver VM's device in the server's status ({} when it has none).
dev() { status | jq -c --arg u "$uuid" "(.devices[] | select(.uuid == \$u)) // {} | $1"; }
socket_up() { [ -S "$1" ]; }

# 1. image (the driver role needs no guestd; same options as the guest boot test so
# that both reuse one cached image)
guestd_opt=()
[ -f "$B/guest-driver/vhost-pci-guestd" ] && guestd_opt=(--guestd "$B/guest-driver/vhost-pci-guestd")
cache_opt=()
[ ! -d "$img/cache" ] && [ -d build/guest/cache ] && cache_opt=(--cache build/guest/cache)
if tools/mkguest -q --out "$img" "${guestd_opt[@]+"${guestd_opt[@]}"}" \
       "${cache_opt[@]+"${cache_opt[@]}"}" >"$run/mkguest.log" 2>&1 &&
   [ -f "$img/initramfs.cpio.gz" ]; then
    ok "guest image in $img"
else
    not_ok "guest image in $img" "$(cat "$run/mkguest.log")"
    skip_rest "no guest image"
fi
kernel=$img/vmlinux
[ -f "$kernel" ] || kernel=$img/vmlinuz

# 2. device side (server + guestd, local device host), then the daemon: it must
# listen before QEMU starts (QEMU blocks until its vhost-user backend accepts).
uuid=$(cat /proc/sys/kernel/random/uuid)
"$server" --listen "$run/server.sock" --device-host local --local-bus "$run/bus.sock" \
    --mgmt "$run/mgmt.sock" --log-level debug >"$run/server.log" 2>&1 </dev/null &
pids+=($!)
wait_until 10 socket_up "$run/mgmt.sock"
"$guestd" --bus local --local-bus "$run/bus.sock" --status "$run/guestd.sock" \
    --endpoint loopback --log-level debug >"$run/guestd.log" 2>&1 </dev/null &
pids+=($!)
wait_until 10 socket_up "$run/guestd.sock"
"$client" --socket-path "$run/vu.sock" --server "$run/server.sock" --uuid "$uuid" \
    --device-id 1 --log-level debug >"$run/client.log" 2>&1 </dev/null &
client_pid=$!
pids+=($client_pid)
if wait_until 10 socket_up "$run/vu.sock" &&
   wait_until 10 grep -q "device VM accepts virtio features" "$run/client.log"; then
    ok "vhost-pci-client listens on vu.sock and negotiated features with the server (uuid $uuid)"
else
    not_ok "vhost-pci-client starts" "$(diag_logs)"
    fail_rest "no daemon"
fi

# 3. the driver VM
agent=$run/agent.sock qmp=$run/qmp.sock console=$run/console.log
# shellcheck disable=SC2054  # commas belong to QEMU option values
qemu=("$qemu_bin" -name vp-e2e-drv,process=vp-e2e-drv
      -machine pc -accel tcg -m 512M,slots=4,maxmem=2G -smp 1
      -object memory-backend-memfd,id=mem0,size=512M,share=on -numa node,memdev=mem0
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$kernel" -initrd "$img/initramfs.cpio.gz"
      -append "console=ttyS0 quiet panic=-1 vp.role=driver vp.ip=10.77.0.2/24"
      -serial "file:$console"
      -chardev "socket,id=agent,path=$agent,server=on,wait=off" -serial chardev:agent
      -qmp "unix:$qmp,server=on,wait=off"
      -chardev "socket,id=vu,path=$run/vu.sock,$VP_QEMU_RECONNECT"
      -netdev vhost-user,id=n0,chardev=vu
      -device "virtio-net-pci,netdev=n0$VP_QEMU_NET_VECTORS"
      -pidfile "$run/qemu.pid")
echo "# ${qemu[*]}"
t0=$(date +%s%N)
"${qemu[@]}" >"$run/qemu.log" 2>&1 </dev/null &
qemu_pid=$!
pids+=($qemu_pid)
if ready=$($vpg wait-ready "$console" "$ready_timeout" --pid "$qemu_pid" 2>&1) &&
   wait_until 30 grep -aq "VP-NET-UP dev=eth0" "$console"; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    ok "driver VM boots (QEMU $qemu_ver), its virtio-net (vhost-user${VP_QEMU_NET_VECTORS:-, MSI-X}) is up: $(grep -a VP-NET-UP "$console" | tr -d '\r') ($((ms / 1000)).$(( (ms % 1000) / 100 )) s)"
else
    not_ok "driver VM boots with eth0 up" "$ready" "$(diag_logs)"
    fail_rest "driver VM did not come up"
fi

# 4. the handshake reached the device side
if wait_until 30 grep -q "DEVICE_INFO_ACK(ADD_DONE): net 1 with 2 virtqueues" "$run/client.log"; then
    ok "DEVICE_INFO_ACK(ADD_DONE) once the guest started the device: $(grep -m1 "DEVICE_INFO_ACK(ADD_DONE)" "$run/client.log" | sed 's/.*: DEVICE/DEVICE/')"
else
    not_ok "DEVICE_INFO_ACK(ADD_DONE) reaches the daemon" "$(diag_logs)"
fi

# 5. the server's view: frontend + regions equal to QEMU's RAM as the daemon got it
fe=$(dev '.frontends')
regions=$(dev '[.regions[] | [.gpa, .size, .mmap_offset]] | sort')
windows=$(dev '[.windows[].size]')
# What QEMU sent (the daemon logs each region of the start).
sent=$(sed -n 's/.*  region gpa \(0x[0-9a-f]*\) size \(0x[0-9a-f]*\) mmap_offset \(0x[0-9a-f]*\).*/\1 \2 \3/p' \
       "$run/client.log" | head -n "$(dev '.regions | length')" |
       while read -r g s o; do printf '[%d,%d,%d]\n' "$g" "$s" "$o"; done | jq -cs 'sort')
total=$(dev '[.regions[].size] | add')
below4g_identity=$(dev '[.regions[] | select(.gpa < 4294967296) | .gpa == .mmap_offset] | all')
if [ "$fe" = '[{"device_type":"net","device_id":1,"nvirtqs":2}]' ] &&
   [ "$regions" = "$sent" ] && [ "$windows" = "[536870912]" ] &&
   [ "$total" -le 536870912 ] && [ "$total" -ge $((500 * 1048576)) ] &&
   [ "$below4g_identity" = true ]; then
    ok "vhost-pci-ctl --json: frontend net/1 with 2 virtqueues, regions $regions = QEMU's (total $((total / 1048576)) MiB in one 512 MiB window)"
else
    not_ok "vhost-pci-ctl --json shows the frontend and QEMU's regions" "frontends: $fe" \
        "regions: $regions" "sent by QEMU: $sent" "windows: $windows total: $total" \
        "$(status)"
fi

# 6. the guest driver serves both queues (QEMU's default ring size 256)
gq=$(echo status | socat -t 5 - "UNIX-CONNECT:$run/guestd.sock" 2>/dev/null |
     jq -c '[.devices[].frontends[] | select(.device_id == 1) | .queues[] | [.index, .num, .broken]]')
if [ "$gq" = '[[0,256,false],[1,256,false]]' ]; then
    ok "vhost-pci-guestd serves receiveq and transmitq of net 1 (num 256)"
else
    not_ok "vhost-pci-guestd serves both queues" "queues: $gq"
fi

# 7. packets: the guest's frames go through the device side (guestd's loopback
# endpoint sends each back) and come back into the guest (call eventfd -> INTx)
guest_rx() { $vpg exec "$agent" --timeout 20 -- cat /sys/class/net/eth0/statistics/rx_packets 2>/dev/null; }
rx0=$(guest_rx)
$vpg exec "$agent" --timeout 30 -- 'ping -c 3 -W 1 10.77.0.9 >/dev/null 2>&1; true' >/dev/null 2>&1
rx1=$(guest_rx)
gp=$(echo status | socat -t 5 - "UNIX-CONNECT:$run/guestd.sock" 2>/dev/null |
     jq -c '[.devices[].frontends[] | select(.device_id == 1) | .queues[] | .packets]')
# The interrupt mode the guest really uses: MSI-X gives per-queue vectors
# ("virtioN-input.0" in /proc/interrupts), INTx (vectors=0) one shared "virtioN" line.
irqs=$($vpg exec "$agent" --timeout 20 -- 'grep virtio /proc/interrupts' 2>/dev/null)
if [ -z "$VP_QEMU_NET_VECTORS" ]; then
    irq_ok() { grep -q 'virtio[0-9]*-input\.0' <<<"$irqs"; }; mode="MSI-X (per-queue vectors)"
else
    irq_ok() { [ -n "$irqs" ] && ! grep -q 'virtio[0-9]*-input' <<<"$irqs"; }; mode="INTx (vectors=0)"
fi
if [[ "$rx0" =~ ^[0-9]+$ ]] && [[ "$rx1" =~ ^[0-9]+$ ]] && [ "$rx1" -gt "$rx0" ] &&
   [ "$(jq '.[0] > 0 and .[1] > 0' <<<"$gp")" = true ] && irq_ok; then
    ok "frames through the device side and back: guest eth0 rx_packets $rx0 -> $rx1, guestd queue packets $gp, interrupts $mode on QEMU $qemu_ver"
else
    not_ok "frames go through the device side and back ($mode)" "guest rx_packets $rx0 -> $rx1" \
        "guestd packets $gp" "guest /proc/interrupts: $irqs" "$(diag_logs)"
fi

# 8-9. memory hot-add and hot-remove (pc-dimm, onlined movable so it can go again)
$vpg exec "$agent" --timeout 20 -- 'echo online_movable >/sys/devices/system/memory/auto_online_blocks' \
    >/dev/null 2>&1
nreg=$(dev '.regions | length')
qmp_out=$($vpg qmp "$qmp" --timeout 60 \
  '{"execute":"object-add","arguments":{"qom-type":"memory-backend-memfd","id":"dimm0m","size":134217728,"share":true}}' \
  '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm0","memdev":"dimm0m"}}' 2>&1); rc=$?
has_dimm() { [ "$(dev '[.regions[] | select(.size == 134217728)] | length')" = 1 ] &&
             [ "$(dev '.regions | length')" = $((nreg + 1)) ]; }
if [ "$rc" = 0 ] && wait_until 30 has_dimm &&
   grep -q "hot-added region gpa .* size 0x8000000: MEMORY_INFO_ACK(ADD_DONE)" "$run/client.log"; then
    ok "pc-dimm hot-add: ADD_MEM_REG -> MEMORY_INFO(ADD), server region $(dev '[.regions[] | select(.size == 134217728) | .gpa] | .[0]') size 128 MiB, $(dev '.windows | length') windows"
else
    not_ok "pc-dimm hot-add reaches the server" "qmp rc=$rc: $qmp_out" "$(diag_logs)" "$(status)"
fi
no_dimm() { [ "$(dev '[.regions[] | select(.size == 134217728)] | length')" = 0 ] &&
            [ "$(dev '.regions | length')" = "$nreg" ]; }
qmp_out=$($vpg qmp-wait-event "$qmp" DEVICE_DELETED --timeout 90 \
          '{"execute":"device_del","arguments":{"id":"dimm0"}}' 2>&1); rc=$?
if [ "$rc" = 0 ] && wait_until 30 no_dimm &&
   grep -q "hot-removed region gpa .* size 0x8000000: MEMORY_INFO_ACK(DEL_DONE)" "$run/client.log"; then
    ok "pc-dimm hot-remove: REM_MEM_REG -> MEMORY_INFO(DEL), back to $nreg regions"
    $vpg qmp "$qmp" '{"execute":"object-del","arguments":{"id":"dimm0m"}}' >/dev/null 2>&1
else
    not_ok "pc-dimm hot-remove reaches the server" "qmp rc=$rc: $qmp_out" "$(diag_logs)" "$(status)"
fi

# 10. the daemon restarts: QEMU ($VP_QEMU_RECONNECT) replays its whole sequence to the new
# one, which registers the running device again
kill "$client_pid"
wait_until 20 bash -c "! kill -0 $client_pid 2>/dev/null"
wait "$client_pid" 2>/dev/null; rc1=$?
mv "$run/client.log" "$run/client1.log"
"$client" --socket-path "$run/vu.sock" --server "$run/server.sock" --uuid "$uuid" \
    --device-id 1 --log-level debug >"$run/client.log" 2>&1 </dev/null &
client_pid=$!
pids+=($client_pid)
back() { [ "$(dev '.frontends | length')" = 1 ] && [ "$(dev '.regions | length')" = "$nreg" ]; }
if [ "$rc1" = 0 ] && grep -q "shutdown: done" "$run/client1.log" &&
   wait_until 30 grep -q "DEVICE_INFO_ACK(ADD_DONE): net 1 with 2 virtqueues" "$run/client.log" &&
   wait_until 10 back; then
    ok "daemon restart: the old one sent DEVICE_INFO(DEL) and exited 0; QEMU reconnected and the new one registered the running device again"
else
    not_ok "QEMU reconnects to a restarted daemon" "first daemon rc=$rc1" \
        "$(tail -n 20 "$run/client1.log" | sed 's/^/  /')" "$(diag_logs)" "$(status)"
fi

# 11. QEMU quits: the frontend and the memory leave the device VM
$vpg qmp "$qmp" --timeout 10 '{"execute":"quit"}' >/dev/null 2>&1
wait_until 20 bash -c "! kill -0 $qemu_pid 2>/dev/null"
gone() { [ "$(dev '.frontends | length')" = 0 ] && [ "$(dev '.regions | length')" = 0 ]; }
if wait_until 20 gone && grep -q "frontend disconnected" "$run/client.log"; then
    ok "QEMU quit: DEVICE_INFO(DEL) + MEMORY_INFO(DEL), no frontend or region left ($(grep -c 'GET_VRING_BASE [01]:' "$run/client.log") GET_VRING_BASE answered)"
else
    not_ok "QEMU quitting removes the frontend and memory" "$(diag_logs)" "$(status)"
fi

# 12. SIGTERM: the daemon exits 0 and removes its socket
kill "$client_pid"
wait_until 20 bash -c "! kill -0 $client_pid 2>/dev/null"
wait "$client_pid" 2>/dev/null; rc=$?
if [ "$rc" = 0 ] && [ ! -e "$run/vu.sock" ] && grep -q "stopped" "$run/client.log" &&
   ! grep -qE "CRITICAL|AddressSanitizer|runtime error" "$run/client.log"; then
    ok "vhost-pci-client: SIGTERM -> exit 0, socket removed"
else
    not_ok "vhost-pci-client stops cleanly" "rc=$rc" "$(diag_logs)"
fi
