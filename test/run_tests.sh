#!/usr/bin/env bash
# The whole kms_pg test suite over the PostgreSQL version matrix: the README's
# test command, and what CI runs (.ci/run).  As root on Debian 12:
#
#   bash test/run_tests.sh                    15 on the host, 17 and 18 in chroots
#   KMS_PG_VERSIONS="15 18" bash test/run_tests.sh   a subset
#
# PostgreSQL 15 runs on the host (Debian 12's own packages) with every step
# of test/run_suite.sh.  17 (trixie) and 18 (forky) run inside Debian chroots
# that scripts/pg_chroot.sh makes with debootstrap from Debian's archive and
# keeps in /var/cache/kms_pg (a second run reuses them); there the steps that
# involve the server run: build with -Werror and the export check, pg_regress,
# TAP, the application-driver tests and client interop.  The version-independent steps (C unit tests, the
# emulator's boto3 and JavaScript clients, fuzzing, the docs check) run once,
# on the host.  16 has no Debian package for this machine and is not run.
#
# Prints each version's result and wall time, then one line
# "N passed, M failed" counting versions; exits non-zero if any failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="${KMS_PG_VERSIONS:-15 17 18}"
HOST_MAJOR=15
LOGDIR=$(mktemp -d /tmp/kms_pg_matrix.XXXXXX)

chroot_versions=""
for v in $VERSIONS; do
    case "$v" in
        "$HOST_MAJOR") ;;
        17|18) chroot_versions="$chroot_versions $v" ;;
        *) echo "run_tests: no way to run PostgreSQL $v here (15 host, 17/18 chroot)" >&2; exit 2 ;;
    esac
done
if [ -n "$chroot_versions" ] && [ "$(id -u)" != 0 ]; then
    echo "run_tests: the PostgreSQL$chroot_versions legs run in chroots and need root" \
        "(or run KMS_PG_VERSIONS=$HOST_MAJOR bash test/run_tests.sh)" >&2
    exit 2
fi

source "$ROOT/scripts/pg_chroot.sh"

# Chroots are prepared in the background while the host leg runs (a fresh
# machine spends ~7 minutes per chroot, mostly downloading and unpacking).
declare -A prep_pid
[ -n "$chroot_versions" ] && { kms_chroot_host_tools || exit 1; }
for v in $chroot_versions; do
    ( kms_chroot_ensure "$v" ) >"$LOGDIR/prepare-$v.log" 2>&1 &
    prep_pid[$v]=$!
done

declare -A result seconds
run_leg() {
    local v="$1" start rc; shift
    start=$(date +%s)
    echo "=================== PostgreSQL $v ==================="
    "$@" 2>&1 | tee "$LOGDIR/suite-$v.log"
    rc=${PIPESTATUS[0]}
    seconds[$v]=$(( $(date +%s) - start ))
    if [ "$rc" = 0 ]; then result[$v]=ok; else result[$v]=FAILED; fi
    grep -E '^PostgreSQL [0-9]+ .*passed, [0-9]+ failed$' "$LOGDIR/suite-$v.log" | tail -n 1 \
        | sed 's/^/   /' >"$LOGDIR/summary-$v" || true
}

for v in $VERSIONS; do
    [ "$v" = "$HOST_MAJOR" ] || continue
    # The host leg installs into the host's PostgreSQL: concurrent runs on
    # one machine (other work trees) take turns.
    run_leg "$v" flock /tmp/kms_pg_pg15.lock bash "$ROOT/test/run_suite.sh" --pg "$v"
done

for v in $chroot_versions; do
    echo "== waiting for the PostgreSQL $v chroot"
    if ! wait "${prep_pid[$v]}"; then
        cat "$LOGDIR/prepare-$v.log"
        result[$v]="FAILED (chroot)"; seconds[$v]=0
        continue
    fi
    cat "$LOGDIR/prepare-$v.log"
    dir=$(kms_chroot_dir "$v")
    rm -rf "$dir/opt/kms_pg"
    mkdir -p "$dir/opt/kms_pg"
    rsync -a --exclude .git --exclude node_modules --exclude tmp_check --exclude results \
        "$ROOT/" "$dir/opt/kms_pg/src/"
    run_leg "$v" kms_chroot_run "$v" \
        "cd /opt/kms_pg/src && KMS_IN_CHROOT=1 KMS_SUITE_STEPS=pg bash test/run_suite.sh --pg $v"
done

echo
echo "== PostgreSQL version matrix (logs: $LOGDIR)"
passed=0
failed=0
total=0
for v in $VERSIONS; do
    printf '   PostgreSQL %-3s %-16s %4ss\n' "$v" "${result[$v]}" "${seconds[$v]}"
    [ -f "$LOGDIR/summary-$v" ] && cat "$LOGDIR/summary-$v"
    total=$((total + seconds[$v]))
    if [ "${result[$v]}" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "   PostgreSQL 16: not run (no Debian package for this machine; compat guards at 160000)"
echo "   wall time of the legs: ${total}s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
