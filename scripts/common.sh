# Shared by scripts/demo.sh and the test scripts: privileges, packages, build.
# Sourced, not run.  Works as root (CI) and as a normal user with sudo.
#
# The PostgreSQL major version comes from KMS_PG_MAJOR (the scripts' --pg N
# sets it); by default it is the newest one installed, or, when none is,
# the one this Debian release ships (bookworm 15, trixie 17, forky 18).

KMS_PG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KMS_PG_ROOT

# PostgreSQL majors kms_pg supports (README, test/run_tests.sh).
KMS_PG_SUPPORTED="15 16 17 18"

kms_default_pg_major() {
    local newest codename
    newest=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null \
        | sed -n 's|^/usr/lib/postgresql/\([0-9]*\)/bin/postgres$|\1|p' | sort -n | tail -n 1)
    if [ -n "$newest" ]; then echo "$newest"; return; fi
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    case "$codename" in
        bookworm) echo 15 ;;
        trixie) echo 17 ;;
        *) echo 18 ;;
    esac
}

# "--pg N" as the first arguments of a script selects the version.
if [ "${1:-}" = "--pg" ] && [ -n "${2:-}" ]; then
    KMS_PG_MAJOR="$2"
    shift 2
fi
# KMS_PG_CONFIG=/path/to/pg_config: a PostgreSQL not from Debian's packages
# (built from source, say); its version decides, nothing is installed for it.
if [ -n "${KMS_PG_CONFIG:-}" ]; then
    KMS_PG_MAJOR=$("$KMS_PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
fi
PG_MAJOR="${KMS_PG_MAJOR:-$(kms_default_pg_major)}"
case " $KMS_PG_SUPPORTED " in
    *" $PG_MAJOR "*) ;;
    *) echo "kms_pg supports PostgreSQL $KMS_PG_SUPPORTED, not '$PG_MAJOR'" >&2; exit 2 ;;
esac
KMS_PG_MAJOR="$PG_MAJOR"
export KMS_PG_MAJOR PG_MAJOR
if [ -n "${KMS_PG_CONFIG:-}" ]; then
    PG_CONFIG="$KMS_PG_CONFIG"
    PG_BIN=$("$PG_CONFIG" --bindir)
else
    PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
    PG_CONFIG="${PG_BIN}/pg_config"
fi
export PG_BIN PG_CONFIG
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

# What the suite needs for one PostgreSQL version (also installed into the
# version-matrix chroots, scripts/pg_chroot.sh) ...
kms_pg_packages() {
    local server="postgresql-$1 postgresql-server-dev-$1"
    [ -n "${KMS_PG_CONFIG:-}" ] && server=""
    echo "build-essential ca-certificates openssl $server \
libssl-dev libcurl4-openssl-dev binutils \
python3 python3-botocore python3-boto3 python3-cryptography \
python3-psycopg2 python3-psycopg \
libipc-run-perl perl rsync curl procps"
}
# ... and for the version-independent steps, which run once, on the host:
# libFuzzer (Debian's default clang and its runtime).
KMS_HOST_PACKAGES="clang libclang-rt-dev postgresql-contrib"
KMS_PACKAGES="$(kms_pg_packages "$PG_MAJOR") $KMS_HOST_PACKAGES"

install_packages() {
    local missing=""
    for p in $KMS_PACKAGES "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    # Node.js and npm for the JavaScript clients: Debian's, unless a node is already there
    command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
    if [ -n "$missing" ]; then
        echo "== installing:$missing"
        # forky's Release file can be past its Valid-Until date against the
        # clock; only the matrix chroots (KMS_IN_CHROOT) relax that check.
        local aptopt=""
        [ -n "${KMS_IN_CHROOT:-}" ] && aptopt="-o Acquire::Check-Valid-Until=false"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get $aptopt update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    # Debian starts a default cluster; kms_pg's scripts use their own.
}

build_and_install() {
    echo "== building kms_pg for PostgreSQL $PG_MAJOR ($("$PG_CONFIG" --version))"
    make -C "$KMS_PG_ROOT" -s PG_CONFIG="$PG_CONFIG" clean >/dev/null
    make -C "$KMS_PG_ROOT" -s PG_CONFIG="$PG_CONFIG" COPT="-Werror" >/dev/null
    bash "$KMS_PG_ROOT/test/check_exports.sh" "$KMS_PG_ROOT/kms_pg.so"
    as_root make -C "$KMS_PG_ROOT" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}
