#!/usr/bin/env bash
# kms_pg under AddressSanitizer + UndefinedBehaviorSanitizer, and the C unit
# tests under valgrind ("make sanitize").
#
# Debian's PostgreSQL is not built with ASan, so the extension alone is
# instrumented and the server runs with the ASan runtime preloaded:
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
# (leak detection is off: the postmaster and backends deliberately never
# free their long-lived memory contexts).  Two details make that work:
#  - Debian's postgres links libldap (-> libgnutls) and libgcrypt
#    (-> libgpg-error), whose constructors call bindtextdomain() before the
#    ASan runtime has initialised; its lazy initialisation inside that call
#    leaves glibc's _nl_state_lock held and the server's own
#    bindtextdomain() in main() deadlocks (even "postgres -V" hangs).
#    Preloading those two libraries right after libasan initialises ASan
#    first.
#  - psql, initdb and pg_regress have the same problem with other libraries
#    and need no ASan anyway, so only the server gets the runtime: the
#    private installation's bin/postgres is a wrapper that sets LD_PRELOAD
#    and execs the real binary.
# Everything happens in a private,
# relocated copy of the PostgreSQL installation (PostgreSQL finds its share
# and lib directories relative to its binaries), so the instrumented
# kms_pg.so never replaces the system-wide one other sessions use.
#
# Steps: build kms_pg with -fsanitize=address,undefined into the private
# installation; run the whole pg_regress suite (test/run_regress.sh, with
# the KMS emulator when present) against it; fail on any ASan or UBSan
# report (they are written to $OUT/san.*); then "make -C test/unit
# valgrind" (no leaks, no invalid accesses).
#
# Usage: bash test/sanitize.sh     (as root: runs as postgres)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

# the SigV4 vectors live next to the checkout (as in test/run_tests.sh)
SHARED_DIR="${KMS_SHARED_DIR:-$(cd "$KMS_PG_ROOT/.." && pwd)/shared}"
export KMS_SIGV4_VECTORS="${KMS_SIGV4_VECTORS:-$SHARED_DIR/vectors/sigv4}"

if [ "$(id -u)" = 0 ]; then
    install_packages valgrind gcc
    OUT=$(mktemp -d /tmp/kms_pg_sanitize.XXXXXX)
    chmod 755 "$OUT"
    chown postgres "$OUT"
    exec runuser -u postgres -- env PATH="$PATH" KMS_SANITIZE_OUT="$OUT" \
        KMS_SIGV4_VECTORS="$KMS_SIGV4_VECTORS" bash "${BASH_SOURCE[0]}"
fi

OUT="${KMS_SANITIZE_OUT:-$(mktemp -d /tmp/kms_pg_sanitize.XXXXXX)}"
PG_LIB=/usr/lib/postgresql/${PG_MAJOR}
PG_SHARE=/usr/share/postgresql/${PG_MAJOR}
PG_INC=/usr/include/postgresql
ROOT="$OUT/root"
SAN_BIN="$ROOT$PG_LIB/bin"
LIBASAN=$(gcc -print-file-name=libasan.so)
[ -e "$LIBASAN" ] || { echo "sanitize: libasan.so not found (install gcc)"; exit 1; }

echo "== private PostgreSQL installation in $ROOT"
mkdir -p "$ROOT$PG_LIB" "$ROOT$PG_SHARE" "$ROOT$PG_INC"
cp -a "$PG_LIB/." "$ROOT$PG_LIB/"
cp -a "$PG_SHARE/." "$ROOT$PG_SHARE/"
cp -a "$PG_INC/." "$ROOT$PG_INC/"
# the relocated pg_config must report the private tree
"$SAN_BIN/pg_config" --pkglibdir | grep "^$ROOT" >/dev/null || {
    echo "sanitize: the copied installation is not relocatable"; exit 1; }

echo "== building kms_pg with ASan + UBSan"
SRC="$OUT/src"
rsync -a --exclude .git --exclude node_modules --exclude fuzz/bin "$KMS_PG_ROOT/" "$SRC/"
SANFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
make -s -C "$SRC" clean >/dev/null
make -s -C "$SRC" PG_CONFIG="$SAN_BIN/pg_config" COPT="-Werror" \
    PG_CFLAGS="$SANFLAGS" PG_LDFLAGS="-fsanitize=address,undefined" >"$OUT/build.log" 2>&1 \
    || { cat "$OUT/build.log"; exit 1; }
make -s -C "$SRC" PG_CONFIG="$SAN_BIN/pg_config" install >>"$OUT/build.log" 2>&1 \
    || { cat "$OUT/build.log"; exit 1; }

PRELOAD="$LIBASAN $(ldd "$SAN_BIN/postgres" | awk '/libgpg-error|libgnutls/ {print $3}' | tr '\n' ' ')"
mv "$SAN_BIN/postgres" "$SAN_BIN/postgres.real"
cat >"$SAN_BIN/postgres" <<EOF
#!/bin/sh
# test/sanitize.sh: a server started as postmaster runs with the ASan
# runtime preloaded.  initdb's runs (--boot, --single, -V, -C) do not: they
# never load kms_pg, and initdb's popen("locale -a") would inherit the
# preload and hang the same way.
case "\$1" in
    --boot|--single|-V|--version|-C|--describe-config)
        exec "$SAN_BIN/postgres.real" "\$@" ;;
esac
: >"$OUT/asan_server_started"
LD_PRELOAD="$PRELOAD" exec "$SAN_BIN/postgres.real" "\$@"
EOF
chmod 755 "$SAN_BIN/postgres"
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$PRELOAD" "$SAN_BIN/postgres.real" -V | grep PostgreSQL >/dev/null || {
    echo "sanitize: postgres does not start with the ASan runtime preloaded"; exit 1; }
nm -D "$ROOT$PG_LIB/lib/kms_pg.so" | grep __asan_init >/dev/null || {
    echo "sanitize: the installed kms_pg.so is not instrumented"; exit 1; }

failed=0

echo "== pg_regress with the server under the ASan runtime"
# reports go to $OUT/san.<pid>
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$OUT/san:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$OUT/san"
(
    cd "$SRC" || exit 1
    export PATH="$SAN_BIN:$PATH"
    # scripts/common.sh exported the system's PG_CONFIG, which the
    # Makefile's "PG_CONFIG ?= pg_config" would take: pg_regress would then
    # run the system's server and installed kms_pg, not this build
    export PG_CONFIG="$SAN_BIN/pg_config"
    # A child of the server inherits LD_PRELOAD, and /bin/echo under the
    # ASan runtime hangs as described above: the master key command of
    # test/regress.conf becomes a 0600 file with the same key.
    key=$(sed -n "s|^kms_pg.master_key_command = '/bin/echo \([0-9a-f]*\)'|\1|p" test/regress.conf)
    [ -n "$key" ] || { echo "sanitize: no master key command in test/regress.conf"; exit 1; }
    printf '%s\n' "$key" >"$OUT/master.key"
    chmod 600 "$OUT/master.key"
    sed -i "s|^kms_pg.master_key_command = .*|kms_pg.master_key_file = '$OUT/master.key'|" test/regress.conf
    echo "jit = off" >>test/regress.conf
    bash test/run_regress.sh
) >"$OUT/regress.log" 2>&1
rc=$?
tail -5 "$OUT/regress.log"
# the suite ran this build's server (the wrapper above), not another one
if [ ! -e "$OUT/asan_server_started" ]; then
    echo "-- pg_regress did not start the private server under the ASan runtime"
    failed=1
fi
if [ $rc != 0 ]; then
    echo "-- pg_regress under ASan: FAILED (log: $OUT/regress.log)"
    head -c 20000 "$SRC/regression.diffs" 2>/dev/null
    failed=1
fi
# the runtime really was in the server: the instrumented module refuses to
# load otherwise, so a passing run proves it; reports are the failure signal
if ls "$OUT"/san.* >/dev/null 2>&1; then
    echo "-- sanitizer reports:"
    for f in "$OUT"/san.*; do echo "---- $f"; head -60 "$f"; done
    failed=1
else
    echo "-- no ASan/UBSan reports"
fi

echo "== C unit tests under valgrind"
if make -s -C "$SRC/test/unit" valgrind KMS_SIGV4_VECTORS="$KMS_SIGV4_VECTORS" \
    >"$OUT/valgrind.log" 2>&1; then
    grep -E "ERROR SUMMARY|definitely lost|All heap blocks were freed" "$OUT/valgrind.log" | sort | uniq -c
else
    tail -40 "$OUT/valgrind.log"
    echo "-- valgrind: FAILED (log: $OUT/valgrind.log)"
    failed=1
fi

if [ $failed = 0 ]; then
    echo "sanitize: all clean"
    rm -rf "$OUT"
else
    echo "sanitize: FAILED; logs kept in $OUT"
fi
exit $failed
