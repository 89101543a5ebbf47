# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # the callers read ctl, run, pair; they set B, T
# tests/e2e/pair-lib.sh - what the e2e scripts on tools/vhost-pci-pair share (sourced,
# bash, after tests/tap.sh and `tap_plan`, with B set to the build dir).
#
#   pair_setup NAME         Bail out without jq; sets run (a fresh /tmp/vp-e2e-NAME.XXXXXX),
#                           pair (tools/vhost-pci-pair -q --dir $run, an array) and ctl;
#                           on exit: `down`, SIGKILL to anything left with $run/ on its
#                           command line, logs copied to $B/test-logs/NAME[-$VP_E2E_LABEL]/
#   blocked / need_pair C   a case C that depends on a failed step: set blocked to the
#                           reason; need_pair prints `not ok C` with it and returns 1
#   now_ms / secs T0        milliseconds now / seconds since T0 ("12.3")
#   wait_for S CMD...       poll CMD every 0.5 s until it succeeds; 1 after S seconds
#   srv_json / srv JQ       the server's `vhost-pci-ctl status --json` (whole / a jq filter)
#   gd_json / gd JQ         guestd's status JSON in the device VM (through the agent)
#   windows_are N           the server's device and guestd both have N windows, all mapped
#   pair_unplug DIMM W      hot-unplug DIMM (device_del, DEVICE_DELETED, object-del),
#                           wait until server and guestd have W windows again and
#                           server.log has a new MEMORY_INFO(DEL) -> DEL_DONE; on failure
#                           prints why (with the caller's `state`) and returns 1
#   pair_case_down          TAP case: `down` leaves no process and no socket of $run
#   pair_case_no_crash      TAP case: no sanitizer report, assertion, segfault or guestd
#                           exit in any log or console of $run

pair_setup() {
    pair_name=$1
    command -v jq >/dev/null || { echo "Bail out! jq missing (tools/install-deps)"; exit 1; }
    ctl=$B/tools/vhost-pci-ctl
    run=$(mktemp -d "/tmp/vp-e2e-$pair_name.XXXXXX")
    pair=(tools/vhost-pci-pair -q --dir "$run")
    trap pair_cleanup EXIT
}
pair_cleanup() {
    "${pair[@]}" down >/dev/null 2>&1
    local p logs=$B/test-logs/$pair_name${VP_E2E_LABEL:+-$VP_E2E_LABEL}
    for p in $(pgrep -f -- "$run/" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    mkdir -p "$logs"
    cp "$run"/*.log "$run"/*.console "$run"/*.cmdline "$logs/" 2>/dev/null
    rm -rf "$run"
}

blocked=
need_pair() { [ -z "$blocked" ] && return 0; not_ok "$1" "not run: $blocked"; return 1; }

now_ms() { date +%s%3N; }
secs() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d' $((ms / 1000)) $(( (ms % 1000) / 100 )); }

wait_for() {
    local t=$1 deadline
    shift
    deadline=$(( $(now_ms) + t * 1000 ))
    until "$@"; do
        [ "$(now_ms)" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

srv_json() { "$ctl" --mgmt "$run/server.mgmt" status --json 2>/dev/null; }
gd_json()  { "${pair[@]}" exec dev --timeout 15 -- vp-sockcat /run/guestd.sock 2>/dev/null; }
srv() { srv_json | jq -r "$1" 2>/dev/null; }
gd()  { gd_json | jq -r "$1" 2>/dev/null; }

windows_are() {
    [ "$(srv '.devices[0].windows | length')" = "$1" ] &&
    [ "$(gd "[.devices[0].windows[] | select(.mapped)] | length")" = "$1" ]
}

pair_unplug() {
    local dimm=$1 w0=$2 out mdels0
    mdels0=$(grep -c 'MEMORY_INFO(DEL) -> DEL_DONE' "$run/server.log")
    if ! out=$("${pair[@]}" hotplug-mem --remove "$dimm" 2>&1); then
        printf '%s\n' "$out" "$(state)"; return 1
    elif ! wait_for "$T" windows_are "$w0"; then
        printf '%s\n' "windows are not back to $w0" "$(state)"; return 1
    elif [ "$(grep -c 'MEMORY_INFO(DEL) -> DEL_DONE' "$run/server.log")" -le "$mdels0" ]; then
        echo "no new 'MEMORY_INFO(DEL) -> DEL_DONE' in server.log"; return 1
    fi
}

pair_case_down() {
    local t0 out rc left socks
    t0=$(now_ms)
    out=$("${pair[@]}" down 2>&1); rc=$?
    left=$(pgrep -af -- "$run/" 2>/dev/null)
    socks=$(find "$run" -type s 2>/dev/null)
    if [ "$rc" = 0 ] && [ -z "$left" ] && [ -z "$socks" ]; then
        ok "down: no process with $run/ on its command line, no socket left ($(secs "$t0") s)"
    else
        not_ok "down leaves nothing behind" "rc=$rc: $out" "processes: $left" "sockets: $socks"
    fi
}

pair_case_no_crash() {
    local bad
    bad=$(grep -HnaE 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|Assertion .* failed|Segmentation fault|core dumped|VP-GUESTD-EXIT|VP-INIT-ERROR' \
          "$run"/server.log "$run"/client.log "$run"/dev.qemu.log "$run"/drv.qemu.log \
          "$run"/dev.console "$run"/drv.console 2>/dev/null | head -n 10)
    if [ -z "$bad" ]; then
        ok "no sanitizer report, assertion, segfault or guestd exit in server.log, client.log, QEMU logs, consoles"
    else
        not_ok "no crash reports in the logs" "$bad"
    fi
}
