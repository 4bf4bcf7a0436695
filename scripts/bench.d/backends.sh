# shellcheck shell=bash
# Benchmark section: storage backends (issue 4). Sourced by scripts/bench.sh after its startup
# cases, with $work, $runs, $results, $debian_tar, $BENCH_USER, run_user and log set; appends rows
# (section, case, median ms, min, max, note) to $results. Can also run alone, which prints the
# rows:  sudo bash scripts/bench.d/backends.sh [RUNS]
#
# Per backend on the Debian image: container setup (create, for copy the copy itself, run
# `true`), removal, a metadata walk over /usr (find -printf: one stat per entry) on a fresh mount
# and again warm, a copy-up workload (touch every file under /usr/share); the same workloads on a
# host directory; overlay with `volatile` (what --rm containers get) against the default; the copy
# backend against `cp -a` on the same filesystem; fuse-overlayfs driven by hand. As root, on the
# machine's disk and on fresh ext4 and xfs (reflink) loop filesystems.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run alone: the few things bench.sh would have set up.
    set -euo pipefail
    cd "$(dirname "$0")/../.."
    runs=${1:-5}
    BENCH_USER=${NOOK_BENCH_USER:-nooktest}
    debian_tar=/var/tmp/nook-test-fixtures/debian-bookworm.tar
    log() { echo "bench: $*" >&2; }
    work=$(mktemp -d /var/tmp/nook-bench-backends.XXXXXX)
    chmod 755 "$work"
    results=$work/results.tsv
    : >"$results"
    cargo build --release --quiet
    install -m 755 "${CARGO_TARGET_DIR:-target}/release/nook" "$work/nook"
    as_user=()
    if [ "$(id -u)" = 0 ]; then
        [ -e /dev/fuse ] && chmod 0666 /dev/fuse
        chown "$BENCH_USER:" "$work"
        as_user=(runuser -u "$BENCH_USER" --)
    fi
    run_user() { "${as_user[@]}" env "HOME=$work" "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" "$@"; }
    backends_alone=true
else
    backends_alone=false
fi

backends_runs=$((runs < 5 ? runs : 5))

# The workloads, timed inside whatever root they run in; prints "COLD_MS WARM_MS TOUCH_MS". Output
# goes to /tmp: the host baseline runs in a tree without /dev.
backends_workload='
t0=$(date +%s%N)
find /usr -xdev -printf "%s %m %u\n" >/tmp/.bench-find
t1=$(date +%s%N)
find /usr -xdev -printf "%s %m %u\n" >/tmp/.bench-find
t2=$(date +%s%N)
find /usr/share -xdev -type f -exec touch {} +
t3=$(date +%s%N)
echo $(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) $(( (t3 - t2) / 1000000 ))'

# backends_row SECTION CASE NOTE VALUES...: median, min and max of VALUES into $results.
backends_row() {
    local section=$1 name=$2 note=$3
    shift 3
    local sorted
    sorted=$(printf '%s\n' "$@" | sort -n)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$name" \
        "$(awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }' <<<"$sorted")" \
        "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")" "$note" >>"$results"
}

backends_ms() { echo $(($(date +%s%N) / 1000000)); }

backends_on() { # DIR
    local dir=$1 nook=$work/nook fs t0 i
    fs=$(stat -f -c %T "$dir")
    local section="backends on $fs ($dir)"
    local storage=$dir/storage
    local as=(run_user env "NOOK_STORAGE=$storage")
    "${as[@]}" "$nook" import -q "$debian_tar" debian >/dev/null
    local image=$storage/images/debian/rootfs
    log "$section"

    # Host baseline: the same tree as plain files of the bench user, in a chroot.
    local host=$dir/host
    run_user sh -c "rm -rf '$host' && mkdir -p '$host' &&
        tar -xf '$debian_tar' -C '$host' --no-same-owner --exclude=./dev 2>/dev/null; true"
    local colds=() warms=() touches=() cold warm touch
    for ((i = 0; i < backends_runs; i++)); do
        read -r cold warm touch < <(run_user unshare --user --map-root-user --root="$host" \
            /bin/sh -c "$backends_workload")
        colds+=("$cold") warms+=("$warm") touches+=("$touch")
    done
    backends_row "$section" "host: find /usr (cold)" "" "${colds[@]}"
    backends_row "$section" "host: find /usr (warm)" "" "${warms[@]}"
    backends_row "$section" "host: touch /usr/share" "" "${touches[@]}"

    local copies=()
    for ((i = 0; i < backends_runs; i++)); do
        sync
        t0=$(backends_ms)
        run_user cp -a --reflink=never "$host" "$dir/cp-plain"
        copies+=($(($(backends_ms) - t0)))
        run_user rm -rf "$dir/cp-plain"
    done
    backends_row "$section" "cp -a --reflink=never (the copy backend's yardstick)" "" "${copies[@]}"
    copies=()
    for ((i = 0; i < backends_runs; i++)); do
        t0=$(backends_ms)
        run_user cp -a --reflink=always "$host" "$dir/cp-reflink" 2>/dev/null || break
        copies+=($(($(backends_ms) - t0)))
        run_user rm -rf "$dir/cp-reflink"
    done
    run_user rm -rf "$dir/cp-reflink"
    [ ${#copies[@]} -gt 0 ] && backends_row "$section" "cp -a --reflink=always" "" "${copies[@]}"

    local variant
    for variant in overlay overlay-rm fuse fuse-rm copy; do
        local backend=${variant%-rm} rm=() note=""
        if [ "$variant" != "$backend" ]; then
            rm=(--rm)
            [ "$backend" = overlay ] && note="--rm: overlay mounted with volatile"
        fi
        local setups=() removals=()
        colds=() warms=() touches=()
        for ((i = 0; i < backends_runs; i++)); do
            t0=$(backends_ms)
            "${as[@]}" "$nook" run -q --name "setup-$i" --backend "$backend" debian true >/dev/null
            setups+=($(($(backends_ms) - t0)))
            t0=$(backends_ms)
            "${as[@]}" "$nook" rm "setup-$i" >/dev/null
            removals+=($(($(backends_ms) - t0)))
            read -r cold warm touch < <("${as[@]}" "$nook" run -q "${rm[@]}" --name "bench-$i" \
                --backend "$backend" debian /bin/sh -c "$backends_workload" 2>&1 | tail -1)
            [ ${#rm[@]} -eq 0 ] && "${as[@]}" "$nook" rm "bench-$i" >/dev/null
            colds+=("$cold") warms+=("$warm") touches+=("$touch")
        done
        if [ ${#rm[@]} -eq 0 ]; then
            backends_row "$section" "$variant: setup (create + run true)" "" "${setups[@]}"
            backends_row "$section" "$variant: nook rm" "" "${removals[@]}"
        fi
        backends_row "$section" "$variant: find /usr (cold)" "$note" "${colds[@]}"
        backends_row "$section" "$variant: find /usr (warm)" "$note" "${warms[@]}"
        backends_row "$section" "$variant: touch /usr/share" "$note" "${touches[@]}"
    done

    # fuse-overlayfs driven by hand over the same image, the workload chrooted into its mount as
    # in a container (the binaries, libraries and /etc/passwd come through FUSE too).
    if command -v fuse-overlayfs >/dev/null; then
        local fh=$dir/fuse-by-hand
        colds=() warms=() touches=()
        for ((i = 0; i < backends_runs; i++)); do
            run_user sh -c "rm -rf '$fh' && mkdir -p '$fh/upper' '$fh/work' '$fh/merged'"
            read -r cold warm touch < <(run_user unshare --user --map-root-user --mount /bin/sh -c "
                fuse-overlayfs -o lowerdir=$image,upperdir=$fh/upper,workdir=$fh/work $fh/merged &&
                chroot $fh/merged /bin/sh -c '$backends_workload'; umount $fh/merged" 2>/dev/null | tail -1)
            colds+=("$cold") warms+=("$warm") touches+=("$touch")
        done
        run_user rm -rf "$fh"
        backends_row "$section" "fuse-overlayfs by hand: find /usr (cold)" "" "${colds[@]}"
        backends_row "$section" "fuse-overlayfs by hand: find /usr (warm)" "" "${warms[@]}"
        backends_row "$section" "fuse-overlayfs by hand: touch /usr/share" "" "${touches[@]}"
    fi
    run_user rm -rf "$host"
    "${as[@]}" "$nook" rmi debian >/dev/null
}

backends_cleanup() {
    local m
    for m in "$work"/backends-ext4 "$work"/backends-xfs; do
        if mountpoint -q "$m"; then umount "$m"; fi
    done
    rm -f "$work"/backends-*.img
}

if [ ! -s "$debian_tar" ]; then
    log "backends: no Debian image at $debian_tar (scripts/mkimage-debian.sh makes it); skipped"
else
    backends_dirs=("$work/backends-disk")
    run_user mkdir -p "$work/backends-disk"
    if [ "$(id -u)" = 0 ]; then
        trap backends_cleanup EXIT
        for backends_fs in ext4 xfs; do
            truncate -s 4G "$work/backends-$backends_fs.img"
            mkdir -p "$work/backends-$backends_fs"
            if [ $backends_fs = xfs ]; then
                mkfs.xfs -q -m reflink=1 "$work/backends-$backends_fs.img" || continue
            else
                mkfs.ext4 -q "$work/backends-$backends_fs.img" || continue
            fi
            mount -o loop "$work/backends-$backends_fs.img" "$work/backends-$backends_fs" &&
                chown "$BENCH_USER:" "$work/backends-$backends_fs" &&
                backends_dirs+=("$work/backends-$backends_fs")
        done
    fi
    for backends_dir in "${backends_dirs[@]}"; do
        backends_on "$backends_dir"
    done
    if [ "$(id -u)" = 0 ]; then
        backends_cleanup
        trap - EXIT
    fi
fi

if $backends_alone; then
    column -t -s $'\t' "$results"
    rm -rf "$work"
fi
