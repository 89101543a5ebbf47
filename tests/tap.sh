# tests/tap.sh - TAP output for the shell tests (sourced, bash).
#
#   tap_plan N            print "1..N" (N results will follow)
#   ok NAME               the next result passed
#   not_ok NAME [LINE..]  the next result failed; each LINE (may hold newlines) is
#                         printed as a "# " comment under it
#   check NAME CMD..      ok or not_ok by CMD's exit status
#   skip_rest REASON      the remaining results are skipped (with REASON); exit 0
#   fail_rest REASON      the remaining results failed (with REASON); exit 1
# tests/run counts the "ok" / "not ok" lines.

n=0
tap_plan()  { plan=$1; echo "1..$plan"; }
ok()        { n=$((n + 1)); echo "ok $n - $1"; }
not_ok()    { n=$((n + 1)); echo "not ok $n - $1"; shift
              for l in "$@"; do printf '%s\n' "$l" | sed 's/^/# /'; done; }
check()     { local name=$1; shift; if "$@"; then ok "$name"; else not_ok "$name"; fi; }
skip_rest() { while [ "$n" -lt "$plan" ]; do n=$((n + 1)); echo "ok $n # SKIP $1"; done; exit 0; }
fail_rest() { while [ "$n" -lt "$plan" ]; do not_ok "$1"; done; exit 1; }
