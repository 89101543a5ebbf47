#!/usr/bin/env bash
# test-datapath-netns.sh - the kernel's own network stack at both ends of a vhost-pci
# link, host-only (TAP output for tests/run).
#
#   namespace A: vhost-pci-guestd --tap vpd0   (the device VM side)   10.99.1.1/24
#   namespace B: vhost-pci-frontend --tap vpf0 (a pretend driver VM)  10.99.1.2/24
#   root namespace: vhost-pci-server --device-host local, joining the two.
#
# ping (small and 8900-byte, with MTU 9000 on both TAPs) and TCP transfers both ways
# (socat, 4 MiB of random data, md5sum checked at both ends) cross between the two
# namespaces through vhost-pci. Namespaces and processes are removed on any exit.
# Needs root, /dev/net/tun, ip, socat, busybox (tools/install-deps): when one is
# missing the test prints one "ok 1 # SKIP reason" line.
set -u
B=${VP_B:-build}
server=$B/server/vhost-pci-server
guestd=$B/guest-driver/vhost-pci-guestd
frontend=$B/tools/vhost-pci-frontend

skip() {
    echo "1..1"
    echo "ok 1 # SKIP $1"
    exit 0
}
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, TAP)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
for t in ip socat busybox md5sum timeout; do
    command -v "$t" >/dev/null || skip "$t not installed"
done
for p in "$server" "$guestd" "$frontend"; do
    [ -x "$p" ] || { echo "1..1"; echo "not ok 1 $p not built"; exit 1; }
done

tag=vpdp$$
nsa=$tag-a
nsb=$tag-b
dir=$(mktemp -d /tmp/vp-netns.XXXXXX)
pids=()
n=0
failed=0
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$nsa" 2>/dev/null || true
    ip netns del "$nsb" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

dump_logs() {
    for f in "$dir"/*.log; do
        [ -f "$f" ] || continue
        echo "# ---- $(basename "$f") ----"
        tail -n 40 "$f" | sed 's/^/# /'
    done
}
result() { # result OK|FAIL description
    n=$((n + 1))
    if [ "$1" = OK ]; then
        echo "ok $n $2"
    else
        echo "not ok $n $2"
        failed=1
        dump_logs
    fi
}
wait_for() { # wait_for SECONDS command...: poll every 50 ms
    local end=$((SECONDS + $1))
    shift
    while ! "$@" 2>/dev/null; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}

echo "1..8"
ip netns add "$nsa" && ip netns add "$nsb" || { result FAIL "create network namespaces"; exit 1; }
ip -n "$nsa" link set lo up
ip -n "$nsb" link set lo up

"$server" --listen "$dir/server.sock" --device-host local --local-bus "$dir/lb.sock" \
          --mgmt "$dir/mgmt.sock" --log-level info >"$dir/server.log" 2>&1 &
pids+=($!)
wait_for 5 test -S "$dir/lb.sock"
ip netns exec "$nsa" "$guestd" --bus local --local-bus "$dir/lb.sock" --status "$dir/guestd.sock" \
    --tap vpd0 --log-level info >"$dir/guestd.log" 2>&1 &
pids+=($!)
wait_for 5 test -S "$dir/guestd.sock"
ip netns exec "$nsb" "$frontend" --server "$dir/server.sock" --tap vpf0 \
    --ready-file "$dir/frontend.ready" >"$dir/frontend.log" 2>&1 &
pids+=($!)
if wait_for 10 test -f "$dir/frontend.ready" &&
   wait_for 5 grep -q "net 1: started" "$dir/guestd.log"; then
    result OK "guestd (TAP vpd0 in $nsa) and frontend (TAP vpf0 in $nsb) linked through vhost-pci"
else
    result FAIL "guestd and frontend linked through vhost-pci"
    exit 1
fi

ip -n "$nsa" addr add 10.99.1.1/24 dev vpd0
ip -n "$nsa" link set vpd0 mtu 9000 up
ip -n "$nsb" addr add 10.99.1.2/24 dev vpf0
ip -n "$nsb" link set vpf0 mtu 9000 up

if timeout 30 ip netns exec "$nsb" busybox ping -c 3 -w 20 10.99.1.1 >"$dir/ping.log" 2>&1 &&
   grep -q '3 packets received' "$dir/ping.log"; then
    result OK "ping -c 3 10.99.1.1 from $nsb"
else
    cat "$dir/ping.log" | sed 's/^/# /'
    result FAIL "ping -c 3 10.99.1.1 from $nsb"
fi

if timeout 30 ip netns exec "$nsa" busybox ping -c 2 -s 8900 -w 20 10.99.1.2 >"$dir/ping2.log" 2>&1 &&
   grep -q '2 packets received' "$dir/ping2.log"; then
    result OK "ping -s 8900 (jumbo frames, mergeable receive buffers) from $nsa"
else
    cat "$dir/ping2.log" | sed 's/^/# /'
    result FAIL "ping -s 8900 from $nsa"
fi

# TCP transfer: $1 = receiving namespace, $2 = its address, $3 = sending namespace.
tcp_transfer() {
    local rx=$1 addr=$2 tx=$3 port=$4
    head -c $((4 << 20)) /dev/urandom >"$dir/send.$port"
    rm -f "$dir/recv.$port"
    timeout 60 ip netns exec "$rx" socat -u "TCP-LISTEN:$port,reuseaddr" \
        "OPEN:$dir/recv.$port,creat,trunc" 2>"$dir/socat-rx.$port.log" &
    local lpid=$!
    timeout 60 ip netns exec "$tx" socat -u "OPEN:$dir/send.$port" \
        "TCP:$addr:$port,retry=100,interval=0.1" 2>"$dir/socat-tx.$port.log"
    local rc=$?
    wait $lpid
    local rc2=$?
    # md5sum computed inside each namespace's view of its own file.
    local a b
    a=$(ip netns exec "$tx" md5sum <"$dir/send.$port" | cut -d' ' -f1)
    b=$(ip netns exec "$rx" md5sum <"$dir/recv.$port" 2>/dev/null | cut -d' ' -f1)
    echo "# TCP $tx -> $rx: sender md5 $a, receiver md5 $b, socat rc $rc/$rc2"
    [ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ -n "$a" ] && [ "$a" = "$b" ]
}
if tcp_transfer "$nsa" 10.99.1.1 "$nsb" 5001; then
    result OK "TCP 4 MiB $nsb -> $nsa, md5sum equal"
else
    result FAIL "TCP 4 MiB $nsb -> $nsa, md5sum equal"
fi
if tcp_transfer "$nsb" 10.99.1.2 "$nsa" 5002; then
    result OK "TCP 4 MiB $nsa -> $nsb, md5sum equal"
else
    result FAIL "TCP 4 MiB $nsa -> $nsb, md5sum equal"
fi

# Nobody crashed, no queue broke, and guestd counted the traffic.
status=$(printf 'status\n' | timeout 5 socat - "UNIX-CONNECT:$dir/guestd.sock" 2>/dev/null)
alive=1
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || alive=0; done
if [ $alive -eq 1 ] && echo "$status" | grep -q '"packets"' &&
   ! echo "$status" | grep -q '"broken": *true'; then
    echo "# guestd status: $(echo "$status" | tr -d '\n' | cut -c1-400)"
    result OK "server, guestd and frontend still running; no broken device or queue"
else
    echo "# guestd status: $status"
    result FAIL "server, guestd and frontend still running; no broken device or queue"
fi

# The frontend leaves cleanly: DEVICE_INFO(DEL) acknowledged, guestd stops the port.
kill "${pids[2]}"
wait "${pids[2]}"
rc=$?
if [ $rc -eq 0 ] && wait_for 5 grep -q "net 1: stopped" "$dir/guestd.log"; then
    result OK "frontend exit: DEVICE_INFO(DEL) done, guestd stopped the port"
else
    result FAIL "frontend exit (rc $rc): DEVICE_INFO(DEL) done, guestd stopped the port"
fi
# guestd and the server shut down cleanly on SIGTERM, and no log has a sanitizer report.
kill "${pids[1]}" "${pids[0]}"
wait "${pids[1]}"
rc1=$?
wait "${pids[0]}"
rc0=$?
pids=()
if [ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] &&
   ! grep -lE 'Sanitizer|runtime error:' "$dir"/*.log >/dev/null 2>&1; then
    result OK "guestd and server exit cleanly, no sanitizer report"
else
    result FAIL "guestd (rc $rc1) and server (rc $rc0) exit cleanly, no sanitizer report"
fi
exit $failed
