#!/usr/bin/env bash
# Benchmarks: scripts, not tests. Prints tables; never fails on a slow number.
#
#   scripts/bench.sh [images]
#
# As root: builds nook (release), makes sure the Debian image exists (scripts/mkimage-debian.sh),
# and runs every section as the bench user ($NOOK_BENCH_USER, default nooktest) in a scratch
# directory under /var/tmp that is removed at exit.
# As a normal user: runs the sections as that user ($NOOK_BIN, else target/release/nook).
#
# Sections (other issues add theirs):
#   images   import of the Debian image as a three-layer OCI layout (gzip layers, built here):
#            nook against `umoci unpack --rootless` and against plain `tar -xzf` of the same
#            layer files one after the other (the floor: decompress and write, no digests, no
#            owners, no whiteouts); then `nook commit` of a container that changed 1% of the
#            image's files against `cp -a` of the image.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)
SECTIONS=${*:-images}
BENCH_USER=${NOOK_BENCH_USER:-nooktest}
DEBIAN_IMAGE=${NOOK_BENCH_DEBIAN:-/var/tmp/nook-test-fixtures/debian-bookworm.tar}
RUNS=${NOOK_BENCH_RUNS:-5}

log() { echo "bench.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# As root: prepare, then run the sections as the bench user.
# ---------------------------------------------------------------------------------------------
as_root() {
    id "$BENCH_USER" >/dev/null 2>&1 || {
        log "user $BENCH_USER is missing (scripts/test.sh creates nooktest)"
        exit 1
    }
    [ -s "$DEBIAN_IMAGE" ] || ./scripts/mkimage-debian.sh "$DEBIAN_IMAGE"
    cargo build --release --quiet
    work=$(mktemp -d /var/tmp/nook-bench.XXXXXX)
    chmod 0755 "$work"
    install -m 0755 "${CARGO_TARGET_DIR:-target}/release/nook" "$work/nook"
    mkdir "$work/run"
    chown "$BENCH_USER:" "$work" "$work/run"
    chmod 0700 "$work/run"
    # Files of the bench user's subordinate ids are removed as root.
    trap 'rm -rf "$work"' EXIT
    setpriv --reuid="$BENCH_USER" --regid="$BENCH_USER" --init-groups --reset-env \
        env PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" NOOK_BIN="$work/nook" \
        NOOK_BENCH_WORK="$work" XDG_RUNTIME_DIR="$work/run" HOME="$work" \
        NOOK_BENCH_DEBIAN="$DEBIAN_IMAGE" NOOK_BENCH_RUNS="$RUNS" \
        bash "$ROOT_DIR/scripts/bench.sh" $SECTIONS
}

# ---------------------------------------------------------------------------------------------
# Helpers (as the bench user).
# ---------------------------------------------------------------------------------------------
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Median of the numbers on stdin.
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# Milliseconds one run of "$@" takes (its output discarded).
time_ms() {
    local t0 t1
    t0=$(now_ms)
    "$@" >/dev/null 2>&1 || true
    t1=$(now_ms)
    echo $((t1 - t0))
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# Removes a tree the bench user made, including read-only directories.
scrub() {
    [ -e "$1" ] || return 0
    chmod -R u+rwX "$1" 2>/dev/null || true
    rm -rf "$1" 2>/dev/null || true
}

# =============================================================================================
# Section: images
# =============================================================================================

# Splits the Debian tarball into three gzip layers (contiguous thirds of its entries, so a hard
# link's target is always in the same or an earlier layer) and writes an OCI image layout, tag
# `latest`, at $1.
images_make_layout() {
    local out=$1
    python3 - "$DEBIAN_IMAGE" "$out" <<'EOF'
import gzip, hashlib, json, os, platform, subprocess, sys, tarfile

src, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "blobs/sha256"))
with tarfile.open(src) as t:
    members = t.getmembers()
    third = (len(members) + 2) // 3
    layers = []
    for i in range(3):
        raw = os.path.join(out, f"layer{i}.tar")
        with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as layer:
            for m in members[i * third:(i + 1) * third]:
                layer.addfile(m, t.extractfile(m) if m.isreg() else None)
        diff_id = hashlib.sha256(open(raw, "rb").read()).hexdigest()
        subprocess.run(["gzip", "-n", "-6", raw], check=True)
        data = open(raw + ".gz", "rb").read()
        digest = hashlib.sha256(data).hexdigest()
        os.rename(raw + ".gz", os.path.join(out, "blobs/sha256", digest))
        layers.append((digest, len(data), diff_id))

def blob(obj):
    data = json.dumps(obj).encode()
    digest = hashlib.sha256(data).hexdigest()
    open(os.path.join(out, "blobs/sha256", digest), "wb").write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}

arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
config = blob({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/bash"]},
               "rootfs": {"type": "layers", "diff_ids": ["sha256:" + l[2] for l in layers]}})
manifest = blob({"schemaVersion": 2,
                 "mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
                 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                             "digest": "sha256:" + d, "size": s} for d, s, _ in layers]})
index = {"schemaVersion": 2, "manifests": [dict(
    manifest, mediaType="application/vnd.oci.image.manifest.v1+json",
    platform={"architecture": arch, "os": "linux"},
    annotations={"org.opencontainers.image.ref.name": "latest"})]}
json.dump(index, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
for d, _, _ in layers:
    print(os.path.join(out, "blobs/sha256", d))
EOF
}

section_images() {
    local nook=$1 work=$2
    local layout=$work/debian-oci st=$work/images-storage
    echo
    echo "== images: import of the Debian image as a three-layer OCI layout =="
    log "building the OCI layout from $DEBIAN_IMAGE"
    local layers
    mapfile -t layers < <(images_make_layout "$layout")
    local size
    size=$(du -sm "$layout" | cut -f1)
    echo "layout: ${#layers[@]} gzip layers, ${size} MB; $(tar -tf "$DEBIAN_IMAGE" | wc -l) entries"

    local have_umoci=1
    command -v umoci >/dev/null || {
        have_umoci=0
        log "umoci is missing (apt-get install umoci): its column stays empty"
    }
    local i nook_ms=() umoci_ms=() tar_ms=()
    for i in $(seq 0 "$RUNS"); do
        scrub "$st"
        local t
        t=$(time_ms env NOOK_STORAGE="$st" "$nook" import -q "$layout" deb)
        [ -d "$st/images/deb/rootfs/usr/bin" ] || log "nook import failed"
        NOOK_STORAGE="$st" "$nook" rmi deb >/dev/null
        [ "$i" -gt 0 ] && nook_ms+=("$t")

        if [ $have_umoci = 1 ]; then
            scrub "$work/umoci"
            t=$(time_ms umoci unpack --rootless --image "$layout:latest" "$work/umoci")
            [ -d "$work/umoci/rootfs/usr/bin" ] || log "umoci unpack failed"
            scrub "$work/umoci"
            [ "$i" -gt 0 ] && umoci_ms+=("$t")
        fi

        scrub "$work/tar"
        mkdir "$work/tar"
        local t0 t1 l
        t0=$(now_ms)
        for l in "${layers[@]}"; do
            tar -xzf "$l" -C "$work/tar" 2>/dev/null || true
        done
        t1=$(now_ms)
        scrub "$work/tar"
        [ "$i" -gt 0 ] && tar_ms+=($((t1 - t0)))
    done
    local n u f
    n=$(printf '%s\n' "${nook_ms[@]}" | median)
    f=$(printf '%s\n' "${tar_ms[@]}" | median)
    u=-
    [ ${#umoci_ms[@]} -gt 0 ] && u=$(printf '%s\n' "${umoci_ms[@]}" | median)
    printf '%-34s %10s %10s\n' "median of $RUNS warm runs" "ms" "vs floor"
    printf '%-34s %10s %10s\n' "tar -xzf of the 3 layers (floor)" "$f" "1.00"
    printf '%-34s %10s %10s\n' "nook import" "$n" "$(ratio "$n" "$f")"
    printf '%-34s %10s %10s\n' "umoci unpack --rootless" "$u" "$(ratio "$u" "$f")"
    echo "nook / umoci: $(ratio "$n" "$u") (goal: < 1); nook / floor: $(ratio "$n" "$f") (goal: <= 1.3)"

    echo
    echo "== images: commit of a container that changed 1% of the image's files =="
    scrub "$st"
    NOOK_STORAGE="$st" "$nook" import -q "$DEBIAN_IMAGE" deb >/dev/null
    local files
    files=$(NOOK_STORAGE="$st" "$nook" run --rm -q deb sh -c 'find / -xdev -type f | wc -l')
    NOOK_STORAGE="$st" "$nook" run -q --name changed deb sh -c \
        'find / -xdev -type f | awk "NR % 100 == 0" | while read -r f; do echo >> "$f"; done' \
        >/dev/null 2>&1 || true
    local changes
    changes=$(NOOK_STORAGE="$st" "$nook" diff changed | grep -c '^C' || true)
    echo "image: $files files; the container changed $changes entries (directories included)"
    local commit_ms=() copy_ms=()
    for i in $(seq 0 "$RUNS"); do
        local t
        t=$(time_ms env NOOK_STORAGE="$st" "$nook" commit -q changed "snap$i")
        [ -d "$st/images/snap$i/rootfs/usr" ] || log "nook commit failed"
        NOOK_STORAGE="$st" "$nook" rmi "snap$i" >/dev/null
        [ "$i" -gt 0 ] && commit_ms+=("$t")
        scrub "$work/copy"
        # As the bench user: files of subordinate ids that it cannot read are skipped, so the
        # copy does a little less than the commit.
        t=$(time_ms cp -a "$st/images/deb/rootfs" "$work/copy")
        scrub "$work/copy"
        [ "$i" -gt 0 ] && copy_ms+=("$t")
    done
    local c k
    c=$(printf '%s\n' "${commit_ms[@]}" | median)
    k=$(printf '%s\n' "${copy_ms[@]}" | median)
    printf '%-34s %10s %10s\n' "median of $RUNS warm runs" "ms" "vs copy"
    printf '%-34s %10s %10s\n' "cp -a of the image" "$k" "1.00"
    printf '%-34s %10s %10s\n' "nook commit" "$c" "$(ratio "$c" "$k")"
    NOOK_STORAGE="$st" "$nook" rm changed >/dev/null
    NOOK_STORAGE="$st" "$nook" rmi deb >/dev/null
    scrub "$st"
    scrub "$layout"
}

# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    as_root
    exit 0
fi

NOOK=${NOOK_BIN:-$ROOT_DIR/${CARGO_TARGET_DIR:-target}/release/nook}
[ -x "$NOOK" ] || {
    log "no nook binary at $NOOK: cargo build --release, or set NOOK_BIN"
    exit 1
}
WORK=${NOOK_BENCH_WORK:-}
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /var/tmp/nook-bench.XXXXXX)
    trap 'scrub "$WORK"' EXIT
fi
echo "nook benchmarks on $(uname -r), $(nproc) CPUs, $(stat -f -c %T "$WORK") at $WORK"
for section in $SECTIONS; do
    case $section in
    images) section_images "$NOOK" "$WORK" ;;
    *)
        log "unknown section $section"
        exit 1
        ;;
    esac
done
