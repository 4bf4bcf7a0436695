#!/usr/bin/env bash
# nook's main job in one minute: build nook, make a small image from the host's own files (no
# download), run a rootless container that writes over a file of its image, and show that the
# image did not change. Run it as a normal user, or as root: then it runs nook as the unprivileged
# user `nookdemo` (created if missing), because root is not who nook is for.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

HOST_SCRIPT=demo.sh
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh
# What the build needs, and newuidmap/newgidmap (uidmap) so that the container has the
# caller's whole subordinate range: as root installed, otherwise named with the command.
ensure_build_prereqs || exit 1
if [ "$(id -u)" = 0 ]; then
    ensure_packages uidmap || exit 1
elif ! command -v newuidmap >/dev/null 2>&1 && [ ! -x /usr/bin/newuidmap ]; then
    echo "demo.sh: newuidmap is missing (sudo apt-get install -y uidmap): the container will map your own id only"
fi

say "building nook (cargo build --release)"
# The binary's path depends on the target named in .cargo/config.toml: ask cargo for it.
nook_bin=$(cargo build --release --quiet --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)

work=$(mktemp -d /tmp/nook-demo.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
install -m 755 "$nook_bin" "$work/nook"

say "making an image from the host's own programs: $work/image"
image=$work/image
mkdir -p "$image"/{bin,etc,proc,sys,dev,tmp,root}
chmod 1777 "$image/tmp"
for prog in sh ls cat id echo mkdir rm mv touch uname hostname sha256sum ps sleep; do
    path=$(command -v "$prog" 2>/dev/null) || continue
    [ -x "$path" ] || continue
    cp -L "$path" "$image/bin/$prog"
    # The shared libraries each program needs, at the paths the loader expects.
    for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$image$lib" ] || install -D -m 755 "$lib" "$image$lib"
    done
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$image/etc/passwd"
printf 'root:x:0:\n' >"$image/etc/group"
printf 'welcome to the image\n' >"$image/etc/motd"
echo "$(find "$image" | wc -l) entries, $(du -sh "$image" | cut -f1)"

as_user=()
if [ "$(id -u)" = 0 ]; then
    ensure_user_with_subids nookdemo
    chown -R nookdemo: "$work"
    as_user=(runuser -u nookdemo -- env "HOME=$work/home" "NOOK_STORAGE=$work/storage")
    echo "(running as root: nook runs as the unprivileged user nookdemo)"
else
    export NOOK_STORAGE=$work/storage
fi
nook() { "${as_user[@]}" "$work/nook" "$@"; }

fingerprint() { (cd "$image" && find . -printf '%p %m %U %s\n' | sort && cat etc/motd) | sha256sum | cut -c1-16; }
before=$(fingerprint)

say "nook run --rm IMAGE sh -c '…'   (as $("${as_user[@]}" id -un), uid $("${as_user[@]}" id -u))"
nook run --rm "$image" sh -c '
    echo "inside: I am $(id -un) (uid $(id -u)), pid $$, host name $(hostname)"
    echo "inside: /etc/motd says: $(cat /etc/motd)"
    echo "rewritten by the container" > /etc/motd
    echo "inside: /etc/motd now says: $(cat /etc/motd)"
    echo "inside: my uid map:"; cat /proc/self/uid_map'

say "the image after the container wrote to it"
echo "image /etc/motd says: $(cat "$image/etc/motd")"
after=$(fingerprint)
echo "fingerprint before $before, after $after"
[ "$before" = "$after" ] && echo "the image is unchanged" || { echo "THE IMAGE CHANGED"; exit 1; }

say "a kept container: its writes live in its own upper layer until nook rm"
nook run --name demo "$image" sh -c 'echo kept > /root/note'
nook ps
nook rm demo
say "done"
