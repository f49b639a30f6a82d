# Shared by scripts/demo.sh and test/run_tests.sh: privileges, packages, build.
# Sourced, not run.  Works as root (CI) and as a normal user with sudo.

KMS_PG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KMS_PG_ROOT
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
export PATH="${PG_BIN}:${PATH}"

# Debian interpreters only: a pyenv python3 on PATH lacks Debian's botocore.
KMS_PYTHON=/usr/bin/python3
export KMS_PYTHON

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# The user that runs PostgreSQL: ourselves, or "postgres" when we are root
# (PostgreSQL refuses to run as root).
server_user() {
    if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env PATH="$PATH" "$@"
    else
        "$@"
    fi
}

KMS_PACKAGES="build-essential ca-certificates openssl \
postgresql-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR} postgresql-contrib \
libssl-dev libcurl4-openssl-dev \
python3 python3-botocore python3-boto3 python3-cryptography \
python3-psycopg2 python3-psycopg \
libipc-run-perl perl rsync curl \
clang-14 libclang-rt-14-dev"

install_packages() {
    local missing=""
    for p in $KMS_PACKAGES "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    # Node.js and npm for the JavaScript clients: Debian's, unless a node is already there
    command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
    if [ -n "$missing" ]; then
        echo "== installing:$missing"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    # Debian starts a default cluster; kms_pg's scripts use their own.
}

build_and_install() {
    echo "== building kms_pg"
    make -C "$KMS_PG_ROOT" -s PG_CONFIG=/usr/bin/pg_config COPT="-Werror" >/dev/null
    as_root make -C "$KMS_PG_ROOT" -s PG_CONFIG=/usr/bin/pg_config install >/dev/null
}
