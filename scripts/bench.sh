#!/usr/bin/env bash
# Benchmarks nook beside crun, runc, bubblewrap, Charliecloud and podman, all run rootless by one
# unprivileged user in one run, and writes bench/results.md (median, min, max, ratio to crun) and
# bench/startup.png. Only ratios from one run mean anything on a noisy machine.
#
#   sudo scripts/bench.sh [--runs N] [--quick] [--sections all|none|backends,images]
#
# As root it installs what it needs (Debian packages), makes Debian 12's crun runnable on a
# hybrid-cgroup host, creates the user `nookbench` and runs every case as that user. As a normal
# user it runs the cases it can with what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

runs=30
quick=false
sections=all
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --quick) quick=true; runs=10; shift ;;
        --sections) sections=$2; shift 2 ;;
        *) echo "usage: scripts/bench.sh [--runs N] [--quick] [--sections all|none|NAME,…]" >&2; exit 2 ;;
    esac
done

BENCH_USER=nookbench
PACKAGES=(crun runc bubblewrap charliecloud-runtime podman hyperfine umoci gnuplot-nox time
          busybox-static uidmap fuse-overlayfs debootstrap jq)
work=/tmp/nook-bench
out=$repo/bench
log() { echo "bench: $*" >&2; }
HOST_SCRIPT=bench.sh
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh

# ---------------------------------------------------------------------------------------------
# Setup (root): packages, the crun host tweak, the bench user.
# ---------------------------------------------------------------------------------------------
setup_host() {
    ensure_packages "${BUILD_PACKAGES[@]}" "${PACKAGES[@]}"
    make_crun_runnable
    [ -e /dev/fuse ] && chmod 0666 /dev/fuse
    ensure_user_with_subids "$BENCH_USER"
}

as_user=()
if [ "$(id -u)" = 0 ]; then
    setup_host
    as_user=(runuser -u "$BENCH_USER" --)
fi
user_id=$("${as_user[@]}" id -u)
ensure_cargo

log "building nook (release)"
# The binary's path depends on the target named in .cargo/config.toml: ask cargo for it.
nook_bin=$(cargo build --release --quiet --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
rm -rf "$work"
mkdir -p "$work" "$out"
chmod 755 "$work"
install -m 755 "$nook_bin" "$work/nook"

# ---------------------------------------------------------------------------------------------
# Fixtures, owned by the bench user.
# ---------------------------------------------------------------------------------------------
scripts/mkrootfs-busybox.sh "$work/busybox" >/dev/null
debian_tar=/var/tmp/nook-test-fixtures/debian-bookworm.tar
if [ "$(id -u)" = 0 ]; then
    scripts/mkimage-debian.sh "$debian_tar"
fi
[ "$(id -u)" = 0 ] && chown -R "$BENCH_USER:" "$work"

runtime_dir=$work/run
# A clean environment, the same for every runtime: the caller's (RUST_BACKTRACE, a long PATH)
# must not change what is measured.
user_env=(env -i "HOME=$work/home" "NOOK_STORAGE=$work/storage" "XDG_RUNTIME_DIR=$runtime_dir"
          "USER=$BENCH_USER" "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
[ "$(id -u)" = 0 ] || user_env=(env -i "NOOK_STORAGE=$work/storage" "XDG_RUNTIME_DIR=$runtime_dir"
                                "HOME=$work/home" "USER=$(id -un)" "PATH=$PATH")
run_user() { "${as_user[@]}" "${user_env[@]}" "$@"; }
run_user mkdir -p "$work/home" "$runtime_dir"
run_user chmod 700 "$runtime_dir"

if [ -s "$debian_tar" ]; then
    run_user mkdir -p "$work/debian"
    run_user sh -c "tar -C '$work/debian' -xf '$debian_tar' --exclude=./dev/* 2>/dev/null || true"
    run_user "$work/nook" import -q "$debian_tar" debian
fi

# An OCI bundle per image: runc's rootless template running /bin/true, shared by every runtime.
make_bundle() { # DIR ROOTFS
    run_user mkdir -p "$1"
    (cd "$1" && run_user runc spec --rootless)
    run_user sh -c "jq '.process.terminal=false | .process.args=[\"/bin/true\"] | .root.path=\"$2\"
        | .mounts |= map(select(.destination != \"/sys/fs/cgroup\"))' '$1/config.json' > '$1/c.json' &&
        mv '$1/c.json' '$1/config.json'"
}
make_bundle "$work/bundle-busybox" "$work/busybox"
[ -d "$work/debian" ] && make_bundle "$work/bundle-debian" "$work/debian"

# ---------------------------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------------------------
results=$work/results.tsv   # section, case, median_ms, min_ms, max_ms
: >"$results"
# The OCI runtime face (create/start/…) arrived with its own issue; measure it when present.
nook_is_oci() { run_user "$work/nook" --help | grep -qw create; }

# time_case SECTION NAME COMMAND: hyperfine median/min/max in ms, or a note when it fails.
time_case() {
    local section=$1 name=$2 cmd=$3 json=$work/h.json
    if ! run_user sh -c "$cmd" >/dev/null 2>&1; then
        log "skipped ($section) $name: it failed once: $cmd"
        printf '%s\t%s\tfailed\t\t\n' "$section" "$name" >>"$results"
        return 0
    fi
    run_user hyperfine -N --warmup 3 --runs "$runs" --export-json "$json" "$cmd" >/dev/null 2>&1 ||
        run_user hyperfine --warmup 3 --runs "$runs" --export-json "$json" "$cmd" >/dev/null 2>&1
    jq -r --arg s "$section" --arg n "$name" \
        '.results[0] | [$s, $n, (.median*1000), (.min*1000), (.max*1000)] | @tsv' "$json" >>"$results"
    log "$section / $name: $(tail -1 "$results" | cut -f3 | xargs printf '%.2f') ms"
}

# peak_rss NAME COMMAND: the largest resident set of the command's own process, in kB.
peak_rss() {
    local name=$1 cmd=$2 kb
    kb=$(run_user /usr/bin/time -f '%M' sh -c "exec $cmd" 2>&1 >/dev/null | tail -1)
    printf 'peak RSS\t%s\t%s\t\t\n' "$name" "$kb" >>"$results"
}

# concurrent NAME COMMAND_WITH_%i: 32 at once, total wall time; fails count.
concurrent() {
    local name=$1 cmd=$2
    local t0 t1 failures
    t0=$(date +%s%N)
    failures=$(run_user bash -c "fails=0; for i in \$(seq 1 32); do ( ${cmd//%i/\$i} ) >/dev/null 2>&1 & done;
        for j in \$(jobs -p); do wait \$j || fails=\$((fails+1)); done; echo \$fails")
    t1=$(date +%s%N)
    printf '32 concurrent\t%s\t%s\t\t\t%s failures\n' "$name" "$(((t1 - t0) / 1000000))" "$failures" >>"$results"
    log "32 concurrent / $name: $(((t1 - t0) / 1000000)) ms, $failures failures"
}

# ---------------------------------------------------------------------------------------------
# Startup cases.
# ---------------------------------------------------------------------------------------------
startup_section() { # SECTION ROOTFS BUNDLE IMAGE
    local s=$1 rootfs=$2 bundle=$3 image=$4
    time_case "$s" "unshare -Urmpf (floor)" "unshare -Urmpf --mount-proc /bin/true"
    time_case "$s" "ch-run" "ch-run $rootfs -- /bin/true"
    time_case "$s" "bwrap" "bwrap --unshare-all --ro-bind $rootfs / --proc /proc --dev /dev /bin/true"
    time_case "$s" "crun run --bundle" "crun --root $runtime_dir/crun run --bundle $bundle b\$\$"
    time_case "$s" "runc run --bundle" "runc --root $runtime_dir/runc run --bundle $bundle b\$\$"
    if nook_is_oci; then
        time_case "$s" "nook run --bundle" "$work/nook --root $runtime_dir/nook run --bundle $bundle b\$\$"
    fi
    for backend in overlay fuse copy; do
        if run_user "$work/nook" run --help | grep -q "$backend"; then
            time_case "$s" "nook run --rm ($backend)" "$work/nook run --rm -q --backend $backend $image /bin/true"
        fi
    done
    # The cases above map the user's whole subordinate range (newuidmap and newgidmap run for
    # each start); bwrap and the OCI runtimes' rootless specs map the caller's id alone. Like
    # for like:
    time_case "$s" "nook run --rm (overlay, --userns single)" "$work/nook run --rm -q --backend overlay --userns single $image /bin/true"
    # podman's vfs driver copies the whole image per container: busybox only, or it takes minutes.
    if [ "$s" = busybox ] && command -v podman >/dev/null; then
        time_case "$s" "podman run (crun)" "podman --runtime crun --cgroup-manager=cgroupfs --events-backend=file run --rm --net=host $s-img /bin/true"
        if nook_is_oci; then
            time_case "$s" "podman run (nook)" "podman --runtime $work/nook --cgroup-manager=cgroupfs --events-backend=file run --rm --net=host $s-img /bin/true"
        fi
    fi
}

podman_import() { # NAME ROOTFS
    command -v podman >/dev/null || return 0
    run_user sh -c "tar -C '$2' -c . 2>/dev/null | podman --cgroup-manager=cgroupfs --events-backend=file import - $1 >/dev/null" ||
        log "podman import of $1 failed; podman cases will be skipped"
}

log "startup, busybox"
podman_import busybox-img "$work/busybox"
# Setting up wrote and deleted hundreds of megabytes on the store's filesystem; let the
# writeback (and, with `-o discard`, the discards) finish first, or it slows whichever case
# touches the disk first.
sync
sleep 3
startup_section busybox "$work/busybox" "$work/bundle-busybox" "$work/busybox"
if [ -d "$work/debian" ]; then
    log "startup, debian"
    startup_section debian "$work/debian" "$work/bundle-debian" debian
fi

# This machine's root filesystem may be ext4 without a journal, mounted with `discard`: each
# block a delete frees is then discarded before unlink(2) returns, and every start that makes
# and removes a container (or, for crun, its state directory) pays for it. The same busybox
# cases with the store and the runtimes' state on a fresh ext4 with mkfs's defaults:
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
    log "startup, busybox, store on a fresh ext4"
    loop_img=/var/tmp/nook-bench-ext4.img
    loop_dir=$work/ext4
    truncate -s 2G "$loop_img"
    mkfs.ext4 -q -F "$loop_img"
    mkdir -p "$loop_dir"
    if mount -o loop "$loop_img" "$loop_dir"; then
        trap 'umount "$loop_dir" 2>/dev/null; rm -f "$loop_img"' EXIT
        chown "$BENCH_USER:" "$loop_dir"
        saved_env=("${user_env[@]}")
        user_env=(env -i "HOME=$work/home" "NOOK_STORAGE=$loop_dir/storage"
                  "XDG_RUNTIME_DIR=$loop_dir/run" "USER=$BENCH_USER"
                  "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        run_user mkdir -m 700 "$loop_dir/run"
        s="busybox, fresh ext4"
        time_case "$s" "bwrap" "bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev /bin/true"
        time_case "$s" "crun run --bundle" "crun --root $loop_dir/run/crun run --bundle $work/bundle-busybox b\$\$"
        if nook_is_oci; then time_case "$s" "nook run --bundle" "$work/nook --root $loop_dir/run/nook run --bundle $work/bundle-busybox b\$\$"; fi
        time_case "$s" "nook run --rm (overlay)" "$work/nook run --rm -q --backend overlay $work/busybox /bin/true"
        time_case "$s" "nook run --rm (overlay, --userns single)" "$work/nook run --rm -q --backend overlay --userns single $work/busybox /bin/true"
        user_env=("${saved_env[@]}")
        umount "$loop_dir"
        rm -f "$loop_img"
        trap - EXIT
    else
        log "could not mount a loop filesystem; skipping the fresh-ext4 cases"
    fi
fi

log "create+start+delete"
cycle() { # RUNTIME
    echo "$1 --root $runtime_dir/$(basename "$1") create --bundle $work/bundle-busybox c\$\$ &&
          $1 --root $runtime_dir/$(basename "$1") start c\$\$ &&
          $1 --root $runtime_dir/$(basename "$1") delete --force c\$\$"
}
time_case cycle "crun" "$(cycle crun)"
time_case cycle "runc" "$(cycle runc)"
if nook_is_oci; then
    time_case cycle "nook" "$(cycle "$work/nook")"
fi

log "peak RSS"
peak_rss "crun run --bundle" "crun --root $runtime_dir/crun run --bundle $work/bundle-busybox rss"
peak_rss "runc run --bundle" "runc --root $runtime_dir/runc run --bundle $work/bundle-busybox rss"
peak_rss "bwrap" "bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev /bin/true"
peak_rss "ch-run" "ch-run $work/busybox -- /bin/true"
peak_rss "nook run --rm" "$work/nook run --rm -q $work/busybox /bin/true"
peak_rss "nook run --rm --userns single" "$work/nook run --rm -q --userns single $work/busybox /bin/true"
if nook_is_oci; then
    peak_rss "nook run --bundle" "$work/nook --root $runtime_dir/nook run --bundle $work/bundle-busybox rss"
fi

if ! $quick; then
    log "32 concurrent"
    concurrent "crun" "crun --root $runtime_dir/crun run --bundle $work/bundle-busybox k%i"
    concurrent "runc" "runc --root $runtime_dir/runc run --bundle $work/bundle-busybox k%i"
    concurrent "bwrap" "bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev /bin/true"
    concurrent "nook run --rm" "$work/nook run --rm -q $work/busybox /bin/true"
    if nook_is_oci; then
        concurrent "nook run --bundle" "$work/nook --root $runtime_dir/nook run --bundle $work/bundle-busybox k%i"
    fi
fi

# Further sections (storage backends, image import) append to $results through time_case.
for section in scripts/bench.d/*.sh; do
    [ -e "$section" ] || continue
    case ",$sections," in
        ,all,|*",$(basename "$section" .sh),"*) ;;
        *) continue ;;
    esac
    log "section $(basename "$section" .sh)"
    # shellcheck source=/dev/null
    . "$section"
done

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
store_fs=$(findmnt -no FSTYPE,OPTIONS -T "$work")
store_dev=$(basename "$(findmnt -no SOURCE -T "$work")")
if [ "${store_fs%% *}" = ext4 ] && ! ls -d /proc/fs/jbd2/"$store_dev"-* >/dev/null 2>&1; then
    store_fs="$store_fs (no journal)"
fi
python3 - "$results" "$out/results.md" "$runs" "$store_fs" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
sections = collections.OrderedDict()
for r in rows:
    sections.setdefault(r[0], []).append(r)
with open(sys.argv[2], "w") as f:
    f.write(f"# nook benchmarks\n\nOne run, {sys.argv[3]} runs per case (hyperfine median/min/max). "
            "Ratios are to crun in the same section. "
            f"Store and state, unless the section says otherwise: {sys.argv[4]}.\n\n")
    for name, rs in sections.items():
        unit = "kB" if name == "peak RSS" else "ms"
        crun = next((float(r[2]) for r in rs if r[1].startswith("crun") and r[2] not in ("", "failed")), None)
        f.write(f"## {name}\n\n| case | median {unit} | min | max | ratio to crun | note |\n|---|---|---|---|---|---|\n")
        for r in rs:
            r += [""] * (6 - len(r))
            med = r[2]
            ratio = f"{float(med) / crun:.2f}" if crun and med not in ("", "failed") else ""
            fmt = lambda v: f"{float(v):.2f}" if v not in ("", "failed") else v
            f.write(f"| {r[1]} | {fmt(med)} | {fmt(r[3])} | {fmt(r[4])} | {ratio} | {r[5]} |\n")
        f.write("\n")
PY
awk -F'\t' '$1 == "busybox" && $3 != "failed" {printf "\"%s\" %s\n", $2, $3}' "$results" >"$work/startup.dat"
if command -v gnuplot >/dev/null && [ -s "$work/startup.dat" ]; then
    gnuplot <<GP
set terminal pngcairo size 1000,520
set output "$out/startup.png"
set title "Rootless start of a busybox /bin/true container (median of $runs runs)"
set style fill solid 0.8
set boxwidth 0.6
set ylabel "ms (log scale)"
set logscale y
set xtics rotate by -30
set grid ytics
plot "$work/startup.dat" using 0:2:xtic(1) with boxes notitle lc rgb "#3465a4", \
     "" using 0:2:(sprintf("%.1f",\$2)) with labels offset 0,0.7 notitle
GP
fi
log "wrote $out/results.md${out:+ and $out/startup.png}"
cat "$out/results.md"
