#!/usr/bin/env bash
# Build nook and run its whole test suite.
#
#   usage: scripts/test.sh [--fresh] [--setup] [--old-kernel] [CARGO TEST ARGS...]
#
# As root (CI): installs what the tests need, makes /dev/fuse usable, creates the unprivileged
# test users and runs the suite; the tests then run nook as `nooktest` (with a subordinate id
# range) and `nooktest-nosub` (without one), never as root.
# As a normal user: runs the suite with nook run as that same user.
#
# --fresh  first removes every cache the suite uses, as if the machine had never run it: the
#          fixtures under /var/tmp (busybox trees, the Debian tarball, the loop filesystems),
#          the installed test binaries and leftover test directories under /tmp, the test users
#          with their homes and storage (as root), and target/. Installed packages stay.
# --setup  prepares the host (packages, users, fixtures, loop filesystems) and stops.
# --old-kernel  runs the suite with the system calls of Linux 4.18 (RHEL 8): the harness makes
#          every call added since answer ENOSYS (tests/common/mod.rs, OldKernel), so nook's
#          fallbacks are what runs (issue 19). Needs root: the filter is installed before the
#          harness drops to the test user.
# Other arguments go to `cargo test`.
set -euo pipefail

cd "$(dirname "$0")/.."

HOST_SCRIPT=test.sh
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh

fresh=false
setup_only=false
while [ $# -gt 0 ]; do
    case $1 in
    --fresh) fresh=true ;;
    --setup) setup_only=true ;;
    --old-kernel) export NOOK_TEST_OLD_KERNEL=4.18 ;;
    *) break ;;
    esac
    shift
done

TEST_USER=nooktest
TEST_USER_NOSUB=nooktest-nosub
PACKAGES=("${BUILD_PACKAGES[@]}" busybox-static uidmap fuse-overlayfs debootstrap)
FIXTURES=/var/tmp/nook-test-fixtures
# The realistic image (debootstrap, cached across runs and checked against its recorded
# sha256): see scripts/mkimage-debian.sh.
DEBIAN_IMAGE=$FIXTURES/debian-bookworm.tar

# --- images (issue 6) ------------------------------------------------------------------------
# podman, skopeo: tests/images.rs loads nook's OCI export into podman and runs it, and has
# skopeo read it and write it back (as the test user).
# umoci: scripts/bench.d/images.sh compares `nook import` with `umoci unpack --rootless`.
PACKAGES+=(podman skopeo umoci)
# passt: pasta joins --network private containers (tests/network.rs).
PACKAGES+=(passt)
# bubblewrap: tests/nested.rs runs it beside nook inside rootless podman containers.
PACKAGES+=(bubblewrap)
# slirp4netns: the fallback where pasta is not on PATH (tests/network.rs hides pasta).
# iperf3: scripts/bench.d/network.sh measures throughput through -p.
PACKAGES+=(slirp4netns iperf3)
# docker-registry: tests/registry.rs starts its own on 127.0.0.1 (plain, TLS, htpasswd);
# apache2-utils: htpasswd makes its bcrypt password file; openssl: the test's CA and server
# certificate; python3: tests/fixtures/fault-registry.py (the token flow and the faults).
PACKAGES+=(docker-registry apache2-utils openssl python3)
# ---------------------------------------------------------------------------------------------

log() {
    echo "test.sh: $*" >&2
}

ensure_users() {
    ensure_user_with_subids "$TEST_USER"
    ensure_user_without_subids "$TEST_USER_NOSUB"
}

prepare_host() {
    ensure_packages "${PACKAGES[@]}"
    if [ -e /dev/fuse ]; then
        chmod 0666 /dev/fuse
    fi
    # pasta (tests/network.rs) opens /dev/net/tun as the test user.
    [ -e /dev/net/tun ] && chmod 0666 /dev/net/tun
    ensure_users
    log "building the Debian test image (once): $DEBIAN_IMAGE"
    ./scripts/mkimage-debian.sh "$DEBIAN_IMAGE"
    export NOOK_TEST_DEBIAN_IMAGE=$DEBIAN_IMAGE
    export NOOK_TEST_USER=$TEST_USER
    export NOOK_TEST_USER_NOSUB=$TEST_USER_NOSUB
}

# --- OCI runtime tests (tests/oci.rs) -------------------------------------------
# podman drives nook (--runtime) as the test user; crun runs the same bundles for the
# parity tests.
PACKAGES+=(crun)
# tests/engines.rs starts a private containerd (as root) whose runc v2 shim runs nook and crun.
PACKAGES+=(containerd)
# tests/engines.rs starts a one-node Slurm (munged, slurmctld, slurmd as root) whose oci.conf
# (configs/slurm-oci.conf) runs nook and crun for `srun --container` as the test user.
PACKAGES+=(slurm-wlm munge)

# --- end of the OCI runtime part -------------------------------------------------

# --- Backends (issue 4) -------------------------------------------------------
# The copy backend's reflink test needs a filesystem that shares blocks: an xfs
# (reflink=1) loop filesystem, made here as root and handed to the test user
# through NOOK_TEST_REFLINK_DIR. Its FUSE-storage test needs fusermount3 (fuse3).
# Without them the tests skip locally and fail under CI=true.
REFLINK_IMAGE=/var/tmp/nook-test-reflink.xfs
REFLINK_DIR=/var/tmp/nook-test-reflink
PACKAGES+=(xfsprogs fuse3)

prepare_backends() {
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

# Everything a run of the suite leaves for the next one to reuse (see --fresh above). Another
# suite running beside this one (its own test users, its own test process) keeps its files.
remove_caches() {
    local uid user dir pid
    uid=$(id -u)
    log "--fresh: removing the suite's caches"
    if [ "$uid" -eq 0 ]; then
        cleanup_mounts
        rmdir "$REFLINK_DIR" "$SMALLFS_DIR" 2>/dev/null || true
        rm -f "$REFLINK_IMAGE" "$SMALLFS_IMAGE"
        rm -rf "$FIXTURES"
        for user in "$TEST_USER" "$TEST_USER_NOSUB"; do
            id "$user" >/dev/null 2>&1 || continue
            rm -rf "$FIXTURES-$(id -u "$user")"
            pkill -KILL -u "$user" 2>/dev/null || true
            # The home holds the user's default nook storage and caches (backend verdicts,
            # compiled seccomp profiles); its subordinate ids go with it.
            userdel --remove "$user" 2>/dev/null || userdel "$user"
            sed -i -E "/^${user}:/d" /etc/subuid /etc/subgid
        done
    else
        rm -rf "$FIXTURES-$uid"
    fi
    rm -rf "/tmp/nook-test-bin-$uid"
    # Test directories are /tmp/nook-test-PID-N-NAME: those of test processes that are gone.
    for dir in /tmp/nook-test-[0-9]*; do
        [ -e "$dir" ] || continue
        pid=${dir#/tmp/nook-test-}
        pid=${pid%%-*}
        kill -0 "$pid" 2>/dev/null || rm -rf "$dir" 2>/dev/null || true
    done
    rm -rf target
}

if $fresh; then
    remove_caches
fi

if [ "$(id -u)" -eq 0 ]; then
    prepare_host
    make_crun_runnable
    prepare_backends
    prepare_smallfs
    $setup_only && exit 0
    trap cleanup_mounts EXIT
else
    ensure_build_prereqs
    $setup_only && exit 0
    log "not root: running nook as $(id -un); the test users are not set up"
fi
ensure_cargo

cargo build
cargo test --no-fail-fast "$@"
