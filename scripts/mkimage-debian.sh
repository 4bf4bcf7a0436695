#!/usr/bin/env bash
# Builds a Debian bookworm minbase root filesystem with debootstrap and packs it as a tar archive
# with numeric owners, ready for `nook import`. Needs root (debootstrap does). Cached: an existing
# OUT whose sha256 matches the one recorded beside it (OUT.sha256) when it was built is kept, so
# test runs after the first cost one checksum; any other OUT is built again.
#   usage: scripts/mkimage-debian.sh OUT.tar
set -euo pipefail
out=${1:?usage: mkimage-debian.sh OUT.tar}
if [ -s "$out" ] && [ -s "$out.sha256" ]; then
    if [ "$(sha256sum <"$out" | cut -d' ' -f1)" = "$(cat "$out.sha256")" ]; then
        exit 0
    fi
    echo "mkimage-debian.sh: $out differs from the sha256 recorded when it was built; building it again" >&2
fi
rm -f "$out" "$out.sha256"
if [ "$(id -u)" != 0 ]; then
    echo "mkimage-debian.sh: debootstrap needs root; run it as root (scripts/test.sh does)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    echo "mkimage-debian.sh: debootstrap is missing: apt-get install debootstrap" >&2
    exit 1
fi
mirror=${NOOK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$out")"
work=$(mktemp -d /var/tmp/nook-debootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/log" 2>&1 || {
    tail -20 "$work/log" >&2
    echo "mkimage-debian.sh: debootstrap from $mirror failed" >&2
    exit 1
}
# The image ships without downloaded packages or package lists, as registry images do.
rm -f "$work"/rootfs/var/cache/apt/archives/*.deb
rm -rf "$work"/rootfs/var/lib/apt/lists/*
tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$out.tmp" .
chmod 644 "$out.tmp"
sha256sum <"$out.tmp" | cut -d' ' -f1 >"$out.sha256.tmp"
chmod 644 "$out.sha256.tmp"
mv "$out.tmp" "$out"
mv "$out.sha256.tmp" "$out.sha256"
