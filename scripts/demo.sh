#!/usr/bin/env bash
# One command: install what is missing, build, install, start a throwaway
# cluster with kms_pg preloaded, and run a short demo on the local provider.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_packages
build_and_install

DEMO_DIR=$(mktemp -d /tmp/kms_pg_demo.XXXXXX)
chmod 755 "$DEMO_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DEMO_DIR"
cleanup() { as_server_user pg_ctl -D "$DEMO_DIR/data" stop -m fast >/dev/null 2>&1 || true; rm -rf "$DEMO_DIR"; }
trap cleanup EXIT

as_server_user initdb -D "$DEMO_DIR/data" -A trust -U postgres >/dev/null
# the local provider's master key: a 0600 file outside the data directory
(umask 077; openssl rand -hex 32 > "$DEMO_DIR/master.key")
[ "$(id -u)" = 0 ] && chown postgres "$DEMO_DIR/master.key"
cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'kms_pg'
kms_pg.master_key_file = '$DEMO_DIR/master.key'
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR'
port = 54329
CONF
[ "$(id -u)" = 0 ] && chown postgres "$DEMO_DIR/data/postgresql.conf"
as_server_user pg_ctl -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w start >/dev/null

echo "== demo (local provider)"
as_server_user psql -h "$DEMO_DIR" -p 54329 -U postgres -d postgres -X -v ON_ERROR_STOP=1 -e \
    -f "$KMS_PG_ROOT/scripts/demo.sql"
echo "== demo finished"
