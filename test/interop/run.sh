#!/usr/bin/env bash
# Interop tests: kms_pg values cross between SQL, clients/python and
# clients/js (local provider, and the AWS provider against the project's KMS
# emulator over HTTPS).  Run by test/run_tests.sh as the unprivileged server
# user with KMS_PG_ROOT set; starts its own cluster and emulator in a temp
# directory.  Ends with "N passed, M failed"; exits non-zero on failure.
set -euo pipefail
KMS_PG_ROOT="${KMS_PG_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
export KMS_PG_ROOT
export PG_BIN="${PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}"
export KMS_PYTHON="${KMS_PYTHON:-/usr/bin/python3}"
if [ "$(id -u)" = 0 ]; then
    echo "test/interop/run.sh: run as the unprivileged server user (PostgreSQL refuses root)" >&2
    exit 2
fi
exec "$KMS_PYTHON" "$KMS_PG_ROOT/test/interop/test_interop.py"
