#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154  # run, pair, blocked: tests/e2e/pair-lib.sh
# e2e (issue 9): a device VM whose guest driver accepts fewer virtio-net features than
# offered, with a real QEMU driver VM. vhost-pci-guestd runs with --refuse-features
# 0x8000 (VIRTIO_NET_F_MRG_RXBUF, in VP_NET_FEATURES and negotiated by QEMU's
# virtio-net), vhost-pci-client with --features-from-device: on connecting to the
# server it creates the device with a placeholder region, FEATURE_BITS reaches guestd,
# whose FEATURE_BITS_ACK lacks 0x8000, the client confirms the smaller set with
# FEATURE_BITS_ACK (the renegotiation round of spec 1.5.1.1) and answers QEMU's first
# GET_FEATURES with it. Without the option QEMU negotiates MRG_RXBUF first and then
# refuses the renegotiated backend ("vhost lacks feature mask 0x8000"). Cases:
#
#   the pair comes up (link answers); the client log shows the round (FEATURE_BITS_ACK
#   with fewer bits, refused 0x8000, FEATURE_BITS_ACK sent) and the server's log the
#   driver's answer and the client's confirmation, and nothing was dropped to
#   renegotiate; the server's and guestd's accepted features lack 0x8000, and so does
#   the driver VM's negotiated virtio-net (sysfs); the placeholder region is gone
#   (server regions: the driver VM's RAM only); ping both ways; a checksummed transfer
#   each way; `down` leaves nothing; no crash in any log.
#
# Every wait is bounded; a step that cannot run because an earlier one failed prints
# `not ok` with the reason. Prints TAP.
#
# Environment: VP_B (or B) build dir (default build); VP_E2E_STEP_TIMEOUT (default 120 s,
# bound of each wait); QEMU: which QEMU (7.2, 10.0, a path; tools/qemu-select). The run
# dir is a fresh /tmp/vp-e2e-pair-features.XXXXXX; its logs are copied to
# $VP_B/test-logs/pair-features/ (pair-features-$VP_E2E_LABEL/ under tests/run).
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${VP_B:-${B:-build}}
export VP_B=$B
T=${VP_E2E_STEP_TIMEOUT:-120}
REFUSED=0x8000              # VIRTIO_NET_F_MRG_RXBUF
PH_GPA=4611686018427387904  # the client's placeholder regions start here (1 << 62)

# shellcheck source=../tap.sh
. tests/tap.sh
# shellcheck source=pair-lib.sh
. tests/e2e/pair-lib.sh
tap_plan 9
pair_setup pair-features

state() {
    echo "server: $(srv_json | jq -c '{connections, devices: [.devices[] | {slot, status, features, regions, counters}]}' 2>&1)"
    echo "guestd: $(gd_json | jq -c '{devices: [.devices[] | {slot, status, broken, reason, features}]}' 2>&1)"
    echo "client.log: $(grep -a -i 'feature' "$run/client.log" 2>/dev/null | tail -n 6 | tr '\n' ';')"
}
hex() { printf '0x%x' "$1"; }

# 1. up: guestd refuses MRG_RXBUF, the client asks the device VM first
t0=$(now_ms)
if out=$("${pair[@]}" up --timeout "$T" --client-opt --features-from-device \
         --guestd-opt --refuse-features --guestd-opt $REFUSED 2>&1); then
    ok "pair up with guestd --refuse-features $REFUSED and vhost-pci-client --features-from-device; link answers ($(secs "$t0") s, $(. "$run/env"; echo "QEMU $PAIR_QEMU_VERSION, accel $PAIR_ACCEL"))"
else
    blocked="the pair did not come up (case 1)"
    not_ok "pair up with a device VM that refuses $REFUSED" "$out" \
        "client.log: $(grep -a -iE 'feature|lacks|error|warn' "$run/client.log" 2>/dev/null | tail -n 8)" \
        "drv.qemu.log: $(tail -n 5 "$run/drv.qemu.log" 2>/dev/null)"
fi

# 2. the renegotiation round before QEMU's first GET_FEATURES, in the client's and the
#    server's logs; nobody dropped the frontend to renegotiate
c2="renegotiation round: FEATURE_BITS_ACK without $REFUSED, confirmed by the client before GET_FEATURES"
if need_pair "$c2"; then
    cl=$run/client.log
    round=$(grep -a -o 'FEATURE_BITS_ACK 0x[0-9a-f]* has fewer bits than the offered 0x[0-9a-f]* (refused 0x[0-9a-f]*)' "$cl" | head -n 1)
    sent=$(grep -a -o 'FEATURE_BITS_ACK(0x[0-9a-f]*) sent' "$cl" | head -n 1)
    offer=$(grep -a -o 'GET_FEATURES: offering the frontend 0x[0-9a-f]* (accepted by the device VM)' "$cl" | head -n 1)
    srv_round=$(grep -a -o 'guest driver accepted 0x[0-9a-f]* of 0x[0-9a-f]*: waiting for the client to renegotiate' "$run/server.log" | head -n 1)
    srv_conf=$(grep -a -o 'client confirmed renegotiated features 0x[0-9a-f]*' "$run/server.log" | head -n 1)
    # the round's lines come before the first GET_FEATURES answer
    l_round=$(grep -a -n 'has fewer bits than the offered' "$cl" | head -n 1 | cut -d: -f1)
    l_offer=$(grep -a -n 'GET_FEATURES: offering the frontend' "$cl" | head -n 1 | cut -d: -f1)
    dropped=$(grep -a -E 'feature renegotiation: the device VM accepts only|provisional|server not answering' "$cl" | head -n 3)
    if [[ "$round" == *"(refused $REFUSED)" ]] && [ -n "$sent" ] && [ -n "$offer" ] &&
       [ -n "$srv_round" ] && [ -n "$srv_conf" ] && [ -n "$l_round" ] && [ -n "$l_offer" ] &&
       [ "$l_round" -lt "$l_offer" ] && [ -z "$dropped" ]; then
        ok "client: '$round', '$sent', then '$offer'; server: '$srv_round', '$srv_conf'"
    else
        not_ok "$c2" "round: '$round'" "sent: '$sent'" "offer: '$offer' (line $l_offer, round at line $l_round)" \
            "server: '$srv_round' / '$srv_conf'" "provisional answer or drop: '$dropped'" "$(state)"
    fi
fi

# 3. the reduced set everywhere: server, guestd, the driver VM's virtio-net
c3="accepted features without $REFUSED: server, guestd and the driver VM's virtio-net"
if need_pair "$c3"; then
    s_acc=$(srv '.devices[0].features.accepted')
    g_acc=$(gd '.devices[0].features')
    # sysfs: one character per feature bit, bit 0 first
    vfeat=$("${pair[@]}" exec drv --timeout 20 -- 'cat /sys/class/net/eth0/device/features' 2>&1 | tr -d '\r\n ')
    if [[ "$s_acc" =~ ^[0-9]+$ ]] && [[ "$g_acc" =~ ^[0-9]+$ ]] && [ "$s_acc" -ne 0 ] &&
       [ $((s_acc & REFUSED)) = 0 ] && [ $((g_acc & REFUSED)) = 0 ] &&
       [[ "$vfeat" =~ ^[01]{64}$ ]] && [ "${vfeat:15:1}" = 0 ] && [ "${vfeat:32:1}" = 1 ]; then
        ok "server accepted $(hex "$s_acc"), guestd $(hex "$g_acc"), driver VM virtio-net bit 15 (MRG_RXBUF) 0, bit 32 (VERSION_1) 1"
    else
        not_ok "$c3" "server accepted '$s_acc', guestd '$g_acc'" "driver VM features: '$vfeat'" "$(state)"
    fi
fi

# 4. the placeholder is gone: the device holds the driver VM's memory only
c4="placeholder region removed: the server's device holds the driver VM's memory only"
if need_pair "$c4"; then
    regs=$(srv '[.devices[0].regions[].gpa] | map(tostring) | join(",")')
    high=$(srv "[.devices[0].regions[] | select(.gpa >= $PH_GPA)] | length")
    del=$(grep -a -c 'MEMORY_INFO(DEL) of the placeholder region' "$run/client.log")
    if [ -n "$regs" ] && [ "$high" = 0 ] && [ "$del" = 1 ]; then
        ok "server regions at gpa $regs; client: $del MEMORY_INFO(DEL) of the placeholder; device generation $(srv '.devices[0].generation'), clones $(srv '.devices[0].counters.clones')"
    else
        not_ok "$c4" "regions: '$regs'" "placeholder DELs in client.log: $del" "$(state)"
    fi
fi

# 5-6. traffic with the reduced set
if need_pair "ping both ways"; then
    if out=$("${pair[@]}" ping -c 3 2>&1); then ok "ping: $(tr '\n' ';' <<<"$out")"
    else not_ok "ping both ways" "$out" "$(state)"; fi
fi
if need_pair "checksummed transfer both ways"; then
    if out=$("${pair[@]}" iperf --mb 2 2>&1); then ok "bulk transfer: $(tr '\n' ';' <<<"$out")"
    else not_ok "checksummed transfer both ways" "$out" "$(state)"; fi
fi

# 7. guestd: nothing broken
c7="guestd after the traffic: no broken queue or device"
if need_pair "$c7"; then
    b=$(gd '[.devices[] | select(.broken) | "device slot \(.slot): \(.reason)"] + [.devices[].frontends[].queues[]? | select(.broken) | "queue \(.index)"] | join(", ")')
    pk=$(gd '[.devices[0].frontends[0].queues[]? | "\(.index):\(.packets)"] | join(" ")')
    if [ -z "$b" ] && [ -n "$pk" ]; then ok "guestd: nothing broken; packets per virtqueue (index:packets): $pk"
    else not_ok "$c7" "broken: '$b', packets '$pk'" "$(state)"; fi
fi

# 8. down: nothing left
pair_case_down

# 9. nobody crashed
pair_case_no_crash
