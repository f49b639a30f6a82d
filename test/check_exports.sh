#!/usr/bin/env bash
# Build check: the module exports the two symbols the server looks up.
# From PostgreSQL 16 on, extension symbols are hidden unless declared
# PGDLLEXPORT; a module without an exported _PG_init loads silently and is
# never initialised (no GUCs, no shared memory).  Usage: check_exports.sh SO
set -euo pipefail
so="${1:?usage: check_exports.sh path/to/kms_pg.so}"
missing=""
for sym in _PG_init Pg_magic_func; do
    nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }' | grep -x "$sym" >/dev/null || missing="$missing $sym"
done
if [ -n "$missing" ]; then
    echo "check_exports: $so does not export:$missing" >&2
    exit 1
fi
echo "check_exports: $so exports _PG_init and Pg_magic_func"
