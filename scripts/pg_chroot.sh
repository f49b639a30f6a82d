# Debian chroots that carry a newer PostgreSQL for the version matrix
# (test/run_matrix.sh).  Sourced, not run; needs root (debootstrap, chroot,
# mount).
#
#   kms_chroot_ensure MAJOR   creates /var/cache/kms_pg/chroot-MAJOR, or
#                             unpacks it from the cached tarball beside it
#   kms_chroot_run MAJOR CMD  runs CMD (bash -c) inside it, with /proc, /dev
#                             and /dev/shm mounted, unmounting afterwards
#
# The chroot lives outside the checkout, so a second run on the same machine
# reuses it (a fresh machine builds it: debootstrap ~2 min, packages ~5 min).

KMS_CHROOT_CACHE="${KMS_CHROOT_CACHE:-/var/cache/kms_pg}"
KMS_DEBIAN_MIRROR="${KMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Which Debian suite ships which PostgreSQL major as its default.
kms_chroot_suite() {
    case "$1" in
        17) echo trixie ;;
        18) echo forky ;;
        *) echo "no Debian suite known for PostgreSQL $1" >&2; return 1 ;;
    esac
}

# Packages the suite needs inside the chroot: the server and its headers,
# the build toolchain, the test drivers (Perl TAP, Python, Node).
kms_chroot_packages() {
    local major="$1"
    echo "build-essential ca-certificates openssl \
postgresql-${major} postgresql-server-dev-${major} \
libssl-dev libcurl4-openssl-dev \
python3 python3-botocore python3-boto3 python3-cryptography \
python3-psycopg2 python3-psycopg \
libipc-run-perl perl rsync curl procps iproute2 nodejs npm"
}

kms_chroot_dir() { echo "$KMS_CHROOT_CACHE/chroot-$1"; }

# Apt inside the chroot: forky's Release file may be past its Valid-Until
# date against this machine's clock.
kms_chroot_apt() {
    local dir="$1"; shift
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
        apt-get -o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false -qq "$@"
}

kms_chroot_create() {
    local major="$1" suite dir tmp
    suite=$(kms_chroot_suite "$major") || return 1
    dir=$(kms_chroot_dir "$major")
    tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$KMS_CHROOT_CACHE"
    command -v debootstrap >/dev/null 2>&1 || \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    echo "== debootstrap $suite (PostgreSQL $major) into $tmp"
    # bookworm's debootstrap has no script for forky: the sid script fits
    # every suite after trixie.
    debootstrap --variant=minbase "$suite" "$tmp" "$KMS_DEBIAN_MIRROR" \
        /usr/share/debootstrap/scripts/sid >"$KMS_CHROOT_CACHE/debootstrap-$major.log" 2>&1 \
        || { tail -20 "$KMS_CHROOT_CACHE/debootstrap-$major.log"; return 1; }
    # No service may start inside the chroot (Debian's default cluster).
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mkdir -p "$tmp/etc/postgresql-common/createcluster.d"
    echo "create_main_cluster = false" >"$tmp/etc/postgresql-common/createcluster.d/kms_pg.conf"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    kms_chroot_apt "$tmp" update || return 1
    # shellcheck disable=SC2046
    kms_chroot_apt "$tmp" install -y $(kms_chroot_packages "$major") >/dev/null || return 1
    kms_chroot_apt "$tmp" clean
    mv "$tmp" "$dir"
    echo "== caching $dir.tar"
    tar -C "$dir" -cf "$dir.tar.tmp" . && mv "$dir.tar.tmp" "$dir.tar"
}

kms_chroot_ensure() {
    local major="$1" dir
    dir=$(kms_chroot_dir "$major")
    if [ -x "$dir/usr/lib/postgresql/$major/bin/postgres" ]; then
        return 0
    fi
    if [ -f "$dir.tar" ]; then
        echo "== unpacking cached chroot $dir.tar"
        rm -rf "$dir" && mkdir -p "$dir" && tar -C "$dir" -xf "$dir.tar" && return 0
    fi
    kms_chroot_create "$major"
}

kms_chroot_mount() {
    local dir="$1" m
    for m in proc dev dev/shm dev/pts; do
        mkdir -p "$dir/$m"
        mountpoint -q "$dir/$m" && continue
        case "$m" in
            proc) mount -t proc proc "$dir/proc" ;;
            dev/shm) mount -t tmpfs -o mode=1777 shm "$dir/dev/shm" ;;
            *) mount --bind "/$m" "$dir/$m" ;;
        esac
    done
}

kms_chroot_umount() {
    local dir="$1" m
    for m in dev/pts dev/shm dev proc; do
        mountpoint -q "$dir/$m" && umount -l "$dir/$m"
    done
    return 0
}

kms_chroot_run() {
    local major="$1" dir rc; shift
    dir=$(kms_chroot_dir "$major")
    kms_chroot_mount "$dir"
    chroot "$dir" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 CI="${CI:-}" bash -c "$*"
    rc=$?
    kms_chroot_umount "$dir"
    return $rc
}
