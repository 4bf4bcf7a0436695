#!/usr/bin/env bash
# Build a small rootfs from Debian's busybox-static at DEST.
#
# Usage: scripts/mkrootfs-busybox.sh DEST
#
# The tree holds bin/busybox, one symlink per applet in bin/ (sbin, usr/bin and
# usr/sbin are symlinks to it), a minimal etc/passwd and etc/group (root 0,
# user 1000, nobody 65534) and the usual empty directories. etc/hostname,
# etc/hosts and etc/resolv.conf are left out: nook provides its own.
#
# The tree is built beside DEST and renamed into place, so DEST is either the
# old tree or a complete new one. Works as root and as a normal user; files
# belong to whoever runs it. BUSYBOX=/path overrides the source binary.
set -euo pipefail

die() {
    echo "mkrootfs-busybox: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 DEST"
dest=${1%/}
[ -n "$dest" ] || die "DEST must not be /"

busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "$busybox not found: apt-get install busybox-static"
# A dynamically linked busybox (Debian's 'busybox' package) would not run in a
# tree without its libraries; ldd succeeds only on dynamic executables.
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked: apt-get install busybox-static"
fi

tmp="$dest.tmp.$$"
old="$dest.old.$$"
cleanup() {
    rm -rf -- "$tmp" "$old"
}
trap cleanup EXIT

rm -rf -- "$tmp"
mkdir -p -- "$tmp"

mkdir -p "$tmp"/{bin,dev,etc,home/user,mnt,proc,root,run,sys,tmp,usr,var/tmp}
chmod 0755 "$tmp"
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 0700 "$tmp/root"
ln -s bin "$tmp/sbin"
ln -s ../bin "$tmp/usr/bin"
ln -s ../bin "$tmp/usr/sbin"

cp -- "$busybox" "$tmp/bin/busybox"
chmod 0755 "$tmp/bin/busybox"
applets=$("$tmp/bin/busybox" --list) || die "$busybox --list failed"
[ -n "$applets" ] || die "$busybox --list printed no applets"
while IFS= read -r applet; do
    case $applet in
    "" | busybox | */*) continue ;;
    esac
    ln -s busybox "$tmp/bin/$applet"
done <<<"$applets"
[ -e "$tmp/bin/sh" ] || die "$busybox has no sh applet"

cat >"$tmp/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$tmp/etc/group" <<'GROUP'
root:x:0:
user:x:1000:
nogroup:x:65534:
GROUP
chmod 0644 "$tmp/etc/passwd" "$tmp/etc/group"

if [ -e "$dest" ] || [ -L "$dest" ]; then
    mv -T -- "$dest" "$old"
fi
mv -T -- "$tmp" "$dest"
