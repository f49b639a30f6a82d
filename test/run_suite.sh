#!/usr/bin/env bash
# The kms_pg test suite on ONE PostgreSQL version (test/run_tests.sh runs it
# on every version of the matrix).  Usage:
#
#   bash test/run_suite.sh [--pg N]     N: 15..18, default the newest installed
#
# Installs what is missing, builds with -Werror, checks the exports,
# installs, then runs as an unprivileged user: C unit tests, pg_regress
# (local and AWS provider against the project's KMS emulator), TAP tests,
# the emulator's real-client tests, client interop, fuzzing and the docs
# check.  KMS_SUITE_STEPS=pg runs only the steps that involve the server
# (build, regress, TAP, application drivers, interop): the others do not depend on the
# PostgreSQL version and run once, on the host.  Ends with one line
# "N passed, M failed"; exits non-zero on any failure.
# KMS_SUITE_ONLY="regress tap" runs only the named steps (a developer's
# shortcut; KMS_TAP_TESTS="t/050_cache_aws.pl ..." narrows the TAP step).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
KMS_SUITE_STEPS="${KMS_SUITE_STEPS:-all}"
[ "$KMS_SUITE_STEPS" = pg ] && KMS_PACKAGES="$(kms_pg_packages "$PG_MAJOR")"

set -e
install_packages
build_and_install
set +e

SHARED_DIR="${KMS_SHARED_DIR:-$(cd "$KMS_PG_ROOT/.." && pwd)/shared}"
export KMS_SIGV4_VECTORS="${KMS_SIGV4_VECTORS:-$SHARED_DIR/vectors/sigv4}"

# Work in a copy owned by the server user, so pg_regress and TAP can write.
WORK=$(mktemp -d /tmp/kms_pg_test.XXXXXX)
chmod 755 "$WORK"
rsync -a --exclude .git --exclude node_modules "$KMS_PG_ROOT/" "$WORK/src/"
[ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
export KMS_PG_ROOT_TEST="$WORK/src"

passed=0
failed=0
failures=""
run_step() {
    local name="$1"; shift
    echo "== $name"
    if as_server_user env KMS_PG_ROOT="$WORK/src" KMS_SIGV4_VECTORS="$KMS_SIGV4_VECTORS" \
        KMS_PYTHON="$KMS_PYTHON" HOME="$WORK" PG_CONFIG="$PG_CONFIG" PG_BIN="$PG_BIN" \
        bash -c "cd '$WORK/src' && $*"; then
        passed=$((passed + 1)); echo "-- $name: ok"
    else
        failed=$((failed + 1)); failures="$failures $name"; echo "-- $name: FAILED"
    fi
}

host_step() { [ "$KMS_SUITE_STEPS" = all ]; }
# The step is wanted unless KMS_SUITE_ONLY names others.
want() { [ -z "${KMS_SUITE_ONLY:-}" ] || [[ " $KMS_SUITE_ONLY " == *" $1 "* ]]; }

host_step && want unit && run_step unit "make -s -C test/unit check KMS_SIGV4_VECTORS='$KMS_SIGV4_VECTORS'"

if want regress && [ -f "$WORK/src/test/run_regress.sh" ]; then
    run_step regress "bash test/run_regress.sh"
fi

if want tap && ls "$WORK"/src/t/*.pl >/dev/null 2>&1; then
    run_step tap "bash test/run_tap.sh"
fi

if host_step && want emulator-boto3 && [ -f "$WORK/src/test/clients/test_boto3.py" ]; then
    run_step emulator-boto3 "$KMS_PYTHON test/clients/test_boto3.py"
fi
if host_step && want emulator-js && [ -f "$WORK/src/test/clients/js/package.json" ]; then
    run_step emulator-js "cd test/clients/js && npm ci --silent --no-audit --no-fund && node --test"
fi
if want drivers && [ -f "$WORK/src/test/clients/drivers/test_drivers.py" ]; then
    run_step drivers "cd test/clients/drivers/js && npm ci --silent --no-audit --no-fund && cd .. && $KMS_PYTHON test_drivers.py"
fi
if want interop && [ -f "$WORK/src/test/interop/run.sh" ]; then
    run_step interop "bash test/interop/run.sh"
fi
if host_step && want fuzz && [ -f "$WORK/src/fuzz/Makefile" ]; then
    run_step fuzz "make -s -C fuzz run-short BIN='$WORK/fuzzbin'"
fi
if host_step && want docs && [ -f "$WORK/src/test/docs_check.py" ]; then
    run_step docs "$KMS_PYTHON test/docs_check.py"
fi

if [ "$failed" = 0 ]; then rm -rf "$WORK"; else echo "work tree kept for inspection: $WORK"; fi
echo
[ -n "$failures" ] && echo "failed steps:$failures"
echo "PostgreSQL $PG_MAJOR ($KMS_SUITE_STEPS steps): $passed passed, $failed failed"
[ "$failed" = 0 ]
