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

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

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

# Packages inside the chroot: what test/run_suite.sh needs for one version
# (kms_pg_packages, scripts/common.sh), and Node.js for the interop test.
kms_chroot_packages() {
    echo "$(kms_pg_packages "$1") nodejs npm"
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
    local major="$1" suite dir tmp rc
    suite=$(kms_chroot_suite "$major") || return 1
    dir=$(kms_chroot_dir "$major")
    tmp="$dir.tmp"
    mkdir -p "$KMS_CHROOT_CACHE"
    # A half-made chroot is resumed after debootstrap, never before.
    if [ ! -f "$tmp/.kms_debootstrapped" ]; then
        rm -rf "$tmp"
        echo "== debootstrap $suite (PostgreSQL $major) into $tmp"
        # bookworm's debootstrap has no script for forky: the sid script
        # fits every suite after trixie.
        debootstrap --variant=minbase "$suite" "$tmp" "$KMS_DEBIAN_MIRROR" \
            /usr/share/debootstrap/scripts/sid >"$KMS_CHROOT_CACHE/debootstrap-$major.log" 2>&1 \
            || { tail -n 20 "$KMS_CHROOT_CACHE/debootstrap-$major.log"; return 1; }
        # No service may start inside the chroot (Debian's default cluster).
        printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
        chmod 755 "$tmp/usr/sbin/policy-rc.d"
        mkdir -p "$tmp/etc/postgresql-common/createcluster.d"
        echo "create_main_cluster = false" >"$tmp/etc/postgresql-common/createcluster.d/kms_pg.conf"
        touch "$tmp/.kms_debootstrapped"
    fi
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    echo "== installing PostgreSQL $major and the test tools into $tmp"
    # Maintainer scripts (postgresql-common's systemd-tmpfiles) need /proc.
    kms_chroot_mount "$tmp"
    # shellcheck disable=SC2046
    kms_chroot_apt "$tmp" update &&
        chroot "$tmp" dpkg --configure -a &&
        kms_chroot_apt "$tmp" install -y $(kms_chroot_packages "$major") >/dev/null &&
        kms_chroot_apt "$tmp" clean
    rc=$?
    kms_chroot_umount "$tmp"
    [ "$rc" = 0 ] || return 1
    mv "$tmp" "$dir"
    echo "== caching $dir.tar"
    tar -C "$dir" -cf "$dir.tar.tmp" . && mv "$dir.tar.tmp" "$dir.tar"
}

# debootstrap on the host: run before any chroot is prepared in the
# background, so that no two apt-get runs compete for the host's dpkg lock.
kms_chroot_host_tools() {
    command -v debootstrap >/dev/null 2>&1 && return 0
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
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
    # The chroot trusts what the host trusts (npm's registry may be reached
    # through a TLS proxy whose CA only the host's bundle has).
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/kms_host_ca.crt"
    chroot "$dir" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 CI="${CI:-}" \
        NODE_EXTRA_CA_CERTS=/etc/ssl/certs/kms_host_ca.crt npm_config_cafile=/etc/ssl/certs/kms_host_ca.crt \
        SSL_CERT_FILE=/etc/ssl/certs/kms_host_ca.crt bash -c "$*"
    rc=$?
    kms_chroot_umount "$dir"
    return $rc
}
