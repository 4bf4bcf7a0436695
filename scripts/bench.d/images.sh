# shellcheck shell=bash
# Section "images" of scripts/bench.sh, which sources it (run_user, log, $work, $results, $runs,
# $debian_tar come from there).
#
# import  the Debian image as a three-layer OCI layout (gzip layers, built here from the Debian
#         tarball): `nook import` beside `umoci unpack --rootless` and beside plain `tar -xzf`
#         of the same three layer files one after the other (the floor: decompress and write; no
#         digests, owners, whiteouts or confinement). Goals: within 1.3x the floor, faster than
#         umoci.
# commit  `nook commit` of a container that changed 1% of the image's files, beside `cp -a` of
#         the image. Goal: well under the copy.

images_runs=$((runs < 10 ? runs : 10))

# Splits the Debian tarball into three gzip layers (contiguous thirds of its entries, so that a
# hard link's target is always in the same or an earlier layer) and writes an OCI image layout
# tagged `latest` at $1; prints the layer files.
images_make_layout() {
    run_user python3 - "$debian_tar" "$1" <<'PY'
import hashlib, json, os, platform, subprocess, sys, tarfile

src, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "blobs/sha256"))
layers = []
with tarfile.open(src) as t:
    members = t.getmembers()
    third = (len(members) + 2) // 3
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
PY
}

# images_case SECTION NAME PREPARE COMMAND: hyperfine (PREPARE before each run, untimed) into
# $results; prints the median in ms, or nothing when the command fails.
images_case() {
    local section=$1 name=$2 prepare=$3 cmd=$4 json=$work/images-h.json
    if ! run_user sh -c "$prepare; $cmd" >/dev/null 2>&1; then
        log "skipped ($section) $name: it failed once: $cmd"
        printf '%s\t%s\tfailed\t\t\n' "$section" "$name" >>"$results"
        return 0
    fi
    run_user hyperfine --warmup 1 --runs "$images_runs" --prepare "$prepare" \
        --export-json "$json" "$cmd" >/dev/null 2>&1 || return 0
    jq -r --arg s "$section" --arg n "$name" \
        '.results[0] | [$s, $n, (.median*1000), (.min*1000), (.max*1000)] | @tsv' "$json" >>"$results"
    jq -r '.results[0].median*1000' "$json"
}

images_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

# Appends a note row (no timing) to a section.
images_note() { printf '%s\t%s\t\t\t\t%s\n' "$1" "$2" "$3" >>"$results"; }

images_section() {
    if [ ! -s "$debian_tar" ]; then
        log "skipped images: no Debian image ($debian_tar; scripts/mkimage-debian.sh as root)"
        return 0
    fi
    local img=$work/images layout=$work/images/debian-oci st=$work/images/storage
    run_user mkdir -p "$img"
    log "images: building a three-layer OCI layout from $debian_tar"
    local layers
    mapfile -t layers < <(images_make_layout "$layout")
    local s="images: import of Debian as 3 OCI layers"
    local floor nook umoci untar
    untar="rm -rf $img/tar && mkdir $img/tar"
    local extract=""
    for l in "${layers[@]}"; do extract+="tar -xzf $l -C $img/tar 2>/dev/null; "; done
    floor=$(images_case "$s" "tar -xzf of the 3 layers (floor)" "$untar" "$extract true")
    nook=$(images_case "$s" "nook import" "rm -rf $st" \
        "NOOK_STORAGE=$st $work/nook import -q $layout deb")
    if command -v umoci >/dev/null; then
        umoci=$(images_case "$s" "umoci unpack --rootless" \
            "chmod -R u+rwX $img/umoci 2>/dev/null; rm -rf $img/umoci" \
            "umoci unpack --rootless --image $layout:latest $img/umoci")
    fi
    images_note "$s" "nook / floor" "$(images_ratio "$nook" "$floor") (goal <= 1.3)"
    images_note "$s" "nook / umoci" "$(images_ratio "$nook" "${umoci:-}") (goal < 1)"
    log "images: nook $nook ms, floor $floor ms, umoci ${umoci:-?} ms"

    s="images: commit of a container that changed 1% of the files"
    run_user sh -c "rm -rf $st; NOOK_STORAGE=$st $work/nook import -q $debian_tar base"
    run_user env NOOK_STORAGE="$st" "$work/nook" run -q --name changed base sh -c \
        'find / -xdev -type f | awk "NR % 100 == 0" | while read -r f; do echo >> "$f"; done' \
        >/dev/null 2>&1 || true
    local changed commit copy
    changed=$(run_user env NOOK_STORAGE="$st" "$work/nook" diff changed | grep -c '^C' || true)
    commit=$(images_case "$s" "nook commit" \
        "NOOK_STORAGE=$st $work/nook rmi snap >/dev/null 2>&1 || true" \
        "NOOK_STORAGE=$st $work/nook commit -q changed snap")
    # As the bench user: the few files of subordinate ids it cannot read are left out, so the
    # copy does a little less than the commit.
    copy=$(images_case "$s" "cp -a of the image" "rm -rf $img/copy" \
        "cp -a $st/images/base/rootfs $img/copy 2>/dev/null; true")
    images_note "$s" "nook commit / cp -a" "$(images_ratio "$commit" "$copy") ($changed entries changed)"
    log "images: commit $commit ms, cp -a $copy ms"
    run_user sh -c "NOOK_STORAGE=$st $work/nook rm changed; NOOK_STORAGE=$st $work/nook rmi snap base" \
        >/dev/null 2>&1 || true
    run_user sh -c "chmod -R u+rwX $img 2>/dev/null; rm -rf $img" 2>/dev/null || true
}

images_section
