#!/usr/bin/env bash
# e2e: the guest image of tools/mkguest boots under TCG and can be driven from the host.
#
# Boots one driver-role guest (QEMU, -machine pc, TCG, no network: the virtio-net NIC
# sits on an unconnected hub port), then checks through the command agent
# (tools/vp-guest) and QMP: kernel release, command line, exit status and byte-exact
# output, guest-side timeout, virtio_net + eth0 address, ACPI hot-plug and unplug of an
# ivshmem-plain (1af4:1110, 64-bit BAR2, bytes shared with the host), pc-dimm memory
# hot-plug coming online, that the plain bzImage boots too, and that QEMU quits
# leaving no process behind. Prints TAP.
#
# Environment: VP_B (or B) build dir (default build): the image goes to $VP_B/guest,
# guestd is taken from $VP_B/guest-driver/vhost-pci-guestd when it exists.
# QEMU: which QEMU (7.2, 10.0, a path; tools/qemu-select), default the system's.
# VP_E2E_READY_TIMEOUT (default 90 s).
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
img=$B/guest
ready_timeout=${VP_E2E_READY_TIMEOUT:-90}
vpg=tools/vp-guest

# shellcheck source=../tap.sh
. tests/tap.sh
tap_plan 12
diag()   { sed 's/^/# /'; }
qemu_bin=$(tools/qemu-select 2>&1) || { echo "Bail out! $qemu_bin"; exit 1; }

run=$(mktemp -d /tmp/vp-e2e-boot.XXXXXX)
qemu_pid=
stop_qemu() {   # $1 = pid; SIGTERM, then SIGKILL; bounded
    local p=$1
    kill -0 "$p" 2>/dev/null || return 0
    kill "$p" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
cleanup() {
    [ -n "$qemu_pid" ] && stop_qemu "$qemu_pid"
    # Anything else of ours (matched by the unique run dir on its command line).
    for p in $(pgrep -f -- "$run/" 2>/dev/null); do stop_qemu "$p"; done
    rm -rf "$run" "/dev/shm/$(basename "$run").win"
}
trap cleanup EXIT

# 1. image
guestd_opt=()
[ -f "$B/guest-driver/vhost-pci-guestd" ] && guestd_opt=(--guestd "$B/guest-driver/vhost-pci-guestd")
if tools/mkguest -q --out "$img" "${guestd_opt[@]+"${guestd_opt[@]}"}" >"$run/mkguest.log" 2>&1 &&
   [ -f "$img/vmlinuz" ] && [ -f "$img/initramfs.cpio.gz" ]; then
    ok "mkguest builds $img/vmlinuz and initramfs.cpio.gz"
else
    not_ok "mkguest builds $img/vmlinuz and initramfs.cpio.gz" "$(cat "$run/mkguest.log")"
    skip_rest "no guest image"
fi
kernel=$img/vmlinux
[ -f "$kernel" ] || kernel=$img/vmlinuz
release=$(cat "$img/kernel-release")

# 2. boot (the exact command line is printed as a TAP comment)
agent=$run/agent.sock qmp=$run/qmp.sock console=$run/console.log
shm=/dev/shm/$(basename "$run").win
# shellcheck disable=SC2054  # commas belong to QEMU option values
qemu=("$qemu_bin" -name vp-e2e-boot,process=vp-e2e-boot
      -accel tcg -machine pc -m 512M,slots=2,maxmem=1G -smp 1
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$kernel" -initrd "$img/initramfs.cpio.gz"
      -append "console=ttyS0 quiet panic=-1 vp.role=driver vp.ip=10.77.0.2/24 vp.peer=10.77.0.1"
      -serial "file:$console"
      -chardev "socket,id=agent,path=$agent,server=on,wait=off" -serial chardev:agent
      -qmp "unix:$qmp,server=on,wait=off"
      -netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0,vectors=0
      -pidfile "$run/qemu.pid")
echo "# ${qemu[*]}"
t0=$(date +%s%N)
"${qemu[@]}" >"$run/qemu.log" 2>&1 </dev/null &
qemu_pid=$!
if ready=$($vpg wait-ready "$console" "$ready_timeout" --pid "$qemu_pid" 2>&1); then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    ok "guest reports VP-GUEST-READY ($(basename "$kernel"), TCG, $((ms / 1000)).$(( (ms % 1000) / 100 )) s)"
    echo "# $ready"
else
    not_ok "guest reports VP-GUEST-READY within ${ready_timeout}s" "$ready" \
        "console: $(tail -c 2000 "$console" 2>/dev/null)" "qemu: $(cat "$run/qemu.log")"
    skip_rest "guest did not boot"
fi

# 3-6. the agent
out=$($vpg exec "$agent" --timeout 20 -- uname -r 2>&1); rc=$?
if [ "$rc" = 0 ] && [ "$out" = "$release" ]; then ok "agent: uname -r is $release"
else not_ok "agent: uname -r is $release" "rc=$rc out=$out"; fi

out=$($vpg exec "$agent" --timeout 20 -- cat /proc/cmdline 2>&1); rc=$?
case "$out" in
    *"vp.role=driver vp.ip=10.77.0.2/24 vp.peer=10.77.0.1"*)
        [ "$rc" = 0 ] && ok "agent: /proc/cmdline carries the vp.* words" ||
            not_ok "agent: /proc/cmdline carries the vp.* words" "rc=$rc" ;;
    *) not_ok "agent: /proc/cmdline carries the vp.* words" "rc=$rc out=$out" ;;
esac

$vpg exec "$agent" --timeout 20 -- 'printf "a\n\nb"; printf "err" >&2; exit 7' >"$run/o" 2>"$run/e"; rc=$?
if [ "$rc" = 7 ] && [ "$(od -An -c "$run/o" | tr -s ' ')" = " a \n \n b e r r" ] && [ ! -s "$run/e" ]; then
    ok "agent: exit status 7 and byte-exact output (no trailing newline added)"
else
    not_ok "agent: exit status 7 and byte-exact output" "rc=$rc" "out: $(od -An -c "$run/o")" "err: $(cat "$run/e")"
fi

t=$(date +%s)
out=$($vpg exec "$agent" --timeout 2 -- 'echo started; sleep 60; echo never' 2>&1); rc=$?
secs=$(( $(date +%s) - t ))
out2=$($vpg exec "$agent" --timeout 20 -- echo alive 2>&1); rc2=$?
if [ "$rc" = 137 ] && [ "$secs" -le 12 ] && [ "${out%%$'\n'*}" = started ] &&
   [ "$rc2" = 0 ] && [ "$out2" = alive ]; then
    ok "agent: --timeout 2 kills a hung command (status 137 after ${secs}s), agent answers again"
else
    not_ok "agent: --timeout kills a hung command" "rc=$rc secs=$secs out=$out" "then rc=$rc2 out=$out2"
fi

# 7. virtio-net
out=$($vpg exec "$agent" --timeout 20 -- \
      'grep -q "^virtio_net " /proc/modules && ip -o -4 addr show dev eth0' 2>&1); rc=$?
case "$out" in
    *"inet 10.77.0.2/24"*) ok "virtio_net loaded, eth0 has 10.77.0.2/24" ;;
    *) not_ok "virtio_net loaded, eth0 has 10.77.0.2/24" "rc=$rc out=$out" "$(grep VP- "$console")" ;;
esac

# 8-9. ACPI hot-plug of ivshmem-plain; the host and the guest see the same bytes
head -c 1048576 /dev/zero >"$shm"
printf 'HOST' | dd of="$shm" bs=1 seek=16 conv=notrunc status=none
qmp_out=$($vpg qmp "$qmp" --timeout 20 \
  "{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"memory-backend-file\",\"id\":\"win0\",\"mem-path\":\"$shm\",\"size\":1048576,\"share\":true}}" \
  '{"execute":"device_add","arguments":{"driver":"ivshmem-plain","id":"iv0","memdev":"win0","addr":"0x6"}}' 2>&1); rc=$?
dev=/sys/bus/pci/devices/0000:00:06.0
# ACPI hot-plug is asynchronous in the guest: wait (bounded) for the device.
out=$($vpg exec "$agent" --timeout 30 -- "
  i=0; while [ ! -e $dev/resource2 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
  echo \$(cat $dev/vendor $dev/device) \$(stat -c %s $dev/resource2)
  set -- \$(sed -n 3p $dev/resource); echo flags=\$3
  devmem \$((\$1 + 16)) 32; devmem \$((\$1 + 32)) 32 0x54534547" 2>&1); rc2=$?
host_word=$(dd if="$shm" bs=1 skip=32 count=4 status=none)
if [ "$rc" = 0 ] && [ "$rc2" = 0 ] &&
   [ "$(sed -n 1p <<<"$out")" = "0x1af4 0x1110 1048576" ] &&
   [ $(( $(sed -n 2p <<<"$out" | cut -d= -f2) & 0x100000 )) != 0 ] &&
   [ "$(sed -n 3p <<<"$out")" = 0x54534F48 ] && [ "$host_word" = GEST ]; then
    ok "ivshmem-plain hot-plugged: 1af4:1110 with 1 MiB 64-bit resource2, bytes shared both ways"
else
    not_ok "ivshmem-plain hot-plug" "qmp rc=$rc: $qmp_out" "guest rc=$rc2: $out" "host read: $host_word"
fi

t=$(date +%s)
qmp_out=$($vpg qmp-wait-event "$qmp" DEVICE_DELETED --timeout 30 \
          '{"execute":"device_del","arguments":{"id":"iv0"}}' 2>&1); rc=$?
secs=$(( $(date +%s) - t ))
out=$($vpg exec "$agent" --timeout 20 -- "[ -e $dev ] && echo present || echo gone" 2>&1)
if [ "$rc" = 0 ] && [ "$out" = gone ]; then
    ok "device_del: DEVICE_DELETED after ${secs}s, device gone in the guest"
    $vpg qmp "$qmp" '{"execute":"object-del","arguments":{"id":"win0"}}' >/dev/null 2>&1
else
    not_ok "device_del of ivshmem-plain" "rc=$rc: $qmp_out" "guest: $out"
fi

# 10. pc-dimm hot-plug comes online by itself (the driver VM's memory grows)
before=$($vpg exec "$agent" -- "awk '/MemTotal/ {print \$2}' /proc/meminfo" 2>&1)
qmp_out=$($vpg qmp "$qmp" --timeout 20 \
  '{"execute":"object-add","arguments":{"qom-type":"memory-backend-memfd","id":"dimm0m","size":134217728,"share":true}}' \
  '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm0","memdev":"dimm0m"}}' 2>&1); rc=$?
after=$($vpg exec "$agent" --timeout 30 -- "
  i=0; while [ \$(awk '/MemTotal/ {print \$2}' /proc/meminfo) -le ${before:-0} ] && [ \$i -lt 100 ]; do
      sleep 0.1; i=\$((i+1)); done; awk '/MemTotal/ {print \$2}' /proc/meminfo" 2>&1)
if [ "$rc" = 0 ] && [[ "$before" =~ ^[0-9]+$ ]] && [[ "$after" =~ ^[0-9]+$ ]] &&
   [ $((after - before)) -ge 131072 ]; then
    ok "pc-dimm hot-plug: 128 MiB online in the guest (MemTotal $before -> $after kB)"
else
    not_ok "pc-dimm hot-plug comes online" "qmp rc=$rc: $qmp_out" "MemTotal $before -> $after"
fi

# 11. QMP quit: QEMU exits, no process left
t=$(date +%s)
$vpg qmp "$qmp" --timeout 10 '{"execute":"quit"}' >/dev/null 2>&1
for _ in $(seq 1 200); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
wait "$qemu_pid" 2>/dev/null
left=$(pgrep -f -- "$run/" 2>/dev/null | tr '\n' ' ')
if ! kill -0 "$qemu_pid" 2>/dev/null && [ -z "$left" ]; then
    ok "QMP quit: QEMU gone after $(( $(date +%s) - t ))s, no stray process"
    qemu_pid=
else
    not_ok "QMP quit leaves no QEMU process" "still running: $qemu_pid $left"
fi

# 12. the unmodified bzImage boots as well (vp.probe=1: /init says VP-PROBE-OK, powers off)
t0=$(date +%s%N)
timeout -k 5 "$ready_timeout" "$qemu_bin" -name vp-e2e-probe,process=vp-e2e-probe \
    -accel tcg -machine pc -m 256M -smp 1 -nodefaults -no-user-config -display none \
    -no-reboot -kernel "$img/vmlinuz" -initrd "$img/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 vp.probe=1" -serial "file:$run/probe.log" \
    >"$run/probe-qemu.log" 2>&1 </dev/null
rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if [ "$rc" = 0 ] && grep -aq VP-PROBE-OK "$run/probe.log"; then
    ok "vmlinuz (bzImage) boots to /init and powers off ($((ms / 1000)).$(( (ms % 1000) / 100 )) s)"
else
    not_ok "vmlinuz (bzImage) boots" "rc=$rc" "$(tail -c 1500 "$run/probe.log")"
fi
