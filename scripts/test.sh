#!/usr/bin/env bash
# Build nook and run its whole test suite. Extra arguments go to `cargo test`.
#
# As root (CI): installs what the tests need, makes /dev/fuse usable, creates
# the unprivileged test users and runs the suite; the tests then run nook as
# `nooktest` (with a subordinate id range) and `nooktest-nosub` (without one),
# never as root.
# As a normal user: runs the suite with nook run as that same user.
set -euo pipefail

cd "$(dirname "$0")/.."

TEST_USER=nooktest
TEST_USER_NOSUB=nooktest-nosub
PACKAGES=(busybox-static uidmap fuse-overlayfs libseccomp-dev libc6-dev gcc pkg-config debootstrap)
# The realistic image (debootstrap, cached across runs): see scripts/mkimage-debian.sh.
DEBIAN_IMAGE=/var/tmp/nook-test-fixtures/debian-bookworm.tar

# --- images (issue 6) ------------------------------------------------------------------------
# podman, skopeo: tests/images.rs loads nook's OCI export into podman and runs it, and has
# skopeo read it and write it back (as the test user).
# umoci: scripts/bench.d/images.sh compares `nook import` with `umoci unpack --rootless`.
PACKAGES+=(podman skopeo umoci)
# ---------------------------------------------------------------------------------------------

log() {
    echo "test.sh: $*" >&2
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# First id after every range already given out in /etc/subuid and /etc/subgid,
# rounded up to a multiple of 65536, and at least 100000.
free_subid_start() {
    awk -F: 'NF >= 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
                 end = $2 + $3; if (end > max) max = end
             }
             END {
                 if (max < 100000) { print 100000; exit }
                 print int((max + 65535) / 65536) * 65536
             }' /etc/subuid /etc/subgid
}

# Lines of a subid file that belong to a user, by name or by uid.
has_subids() {
    local file=$1 user=$2 uid
    uid=$(id -u "$user")
    grep -qE "^(${user}|${uid}):" "$file"
}

ensure_users() {
    touch /etc/subuid /etc/subgid

    id "$TEST_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$TEST_USER"
    if ! has_subids /etc/subuid "$TEST_USER" || ! has_subids /etc/subgid "$TEST_USER"; then
        local start end
        start=$(free_subid_start)
        end=$((start + 65535))
        has_subids /etc/subuid "$TEST_USER" || usermod --add-subuids "$start-$end" "$TEST_USER"
        has_subids /etc/subgid "$TEST_USER" || usermod --add-subgids "$start-$end" "$TEST_USER"
    fi

    id "$TEST_USER_NOSUB" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$TEST_USER_NOSUB"
    local uid
    uid=$(id -u "$TEST_USER_NOSUB")
    sed -i -E "/^(${TEST_USER_NOSUB}|${uid}):/d" /etc/subuid /etc/subgid
}

prepare_host() {
    install_packages
    if [ -e /dev/fuse ]; then
        chmod 0666 /dev/fuse
    fi
    ensure_users
    log "building the Debian test image (once): $DEBIAN_IMAGE"
    ./scripts/mkimage-debian.sh "$DEBIAN_IMAGE"
    export NOOK_TEST_USER=$TEST_USER
    export NOOK_TEST_USER_NOSUB=$TEST_USER_NOSUB
}

# --- OCI runtime tests (tests/oci.rs) -------------------------------------------
# podman drives nook (--runtime) as the test user; crun runs the same bundles for the
# parity tests.
PACKAGES+=(podman crun)

# Debian 12's crun 1.8.1 refuses every container on a host whose cgroups are in hybrid
# mode with a controller left on cgroup2 ("cgroups in hybrid mode not supported, drop
# all controllers from cgroupv2"). Mounting each such controller as a cgroup v1
# hierarchy leaves cgroup2 empty, and crun runs. Test setup only: nook itself never
# touches cgroups.
prepare_oci() {
    local unified=/sys/fs/cgroup/unified controller
    [ -f "$unified/cgroup.controllers" ] || return 0
    for controller in $(cat "$unified/cgroup.controllers"); do
        log "moving the $controller cgroup controller to v1 for crun (hybrid cgroups)"
        mkdir -p "/sys/fs/cgroup/$controller"
        mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" ||
            log "could not move $controller to cgroup v1: the crun parity tests may fail"
    done
}
# --- end of the OCI runtime part -------------------------------------------------

# --- Backends (issue 4) -------------------------------------------------------
# The copy backend's reflink test needs a filesystem that shares blocks: an xfs
# (reflink=1) loop filesystem, made here as root and handed to the test user
# through NOOK_TEST_REFLINK_DIR. Its FUSE-storage test needs fusermount3 (fuse3).
# Without them the tests skip locally and fail under CI=true.
REFLINK_IMAGE=/var/tmp/nook-test-reflink.xfs
REFLINK_DIR=/var/tmp/nook-test-reflink

prepare_backends() {
    local missing=() pkg
    for pkg in xfsprogs fuse3; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (backends)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    if ! mountpoint -q "$REFLINK_DIR"; then
        rm -f "$REFLINK_IMAGE"
        truncate -s 2G "$REFLINK_IMAGE"
        if ! mkfs.xfs -q -m reflink=1 "$REFLINK_IMAGE" ||
            ! { mkdir -p "$REFLINK_DIR" && mount -o loop "$REFLINK_IMAGE" "$REFLINK_DIR"; }; then
            log "could not make an xfs loop filesystem: the reflink test will not run"
            rm -f "$REFLINK_IMAGE"
            return 0
        fi
    fi
    chown "$TEST_USER:" "$REFLINK_DIR"
    chmod 0755 "$REFLINK_DIR"
    export NOOK_TEST_REFLINK_DIR=$REFLINK_DIR
}
# -------------------------------------------------------------------------------

# --- A small filesystem for the disk-full tests (tests/faults.rs) -------------
SMALLFS_IMAGE=/var/tmp/nook-test-small.ext4
SMALLFS_DIR=/var/tmp/nook-test-small

prepare_smallfs() {
    if ! mountpoint -q "$SMALLFS_DIR"; then
        rm -f "$SMALLFS_IMAGE"
        truncate -s 64M "$SMALLFS_IMAGE"
        mkfs.ext4 -q -F "$SMALLFS_IMAGE"
        mkdir -p "$SMALLFS_DIR"
        mount -o loop "$SMALLFS_IMAGE" "$SMALLFS_DIR"
    fi
    chown "$TEST_USER:" "$SMALLFS_DIR"
    chmod 0755 "$SMALLFS_DIR"
    export NOOK_TEST_SMALLFS=$SMALLFS_DIR
}
# -------------------------------------------------------------------------------

cleanup_mounts() {
    umount "$REFLINK_DIR" 2>/dev/null && rm -f "$REFLINK_IMAGE"
    umount "$SMALLFS_DIR" 2>/dev/null && rm -f "$SMALLFS_IMAGE"
    return 0
}

if [ "$(id -u)" -eq 0 ]; then
    prepare_host
    prepare_oci
    prepare_backends
    prepare_smallfs
    trap cleanup_mounts EXIT
else
    log "not root: running nook as $(id -un); the test users are not set up"
fi

cargo build
cargo test --no-fail-fast "$@"
