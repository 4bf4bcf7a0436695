#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 15: the smoke run CI does). A crash
# fails the script and leaves the input under fuzz/artifacts/<target>/; turn it into a unit test.
#   usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-15}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz
fi
# cargo-fuzz needs nightly-only compiler flags; the machine's one toolchain is stable, and
# RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O
# Layer application learns tar's structure faster from a few real archives.
if [ ! -d corpus/layer ] || [ -z "$(ls -A corpus/layer 2>/dev/null)" ]; then
    seed=$(mktemp -d)
    mkdir -p corpus/layer "$seed/d/sub"
    echo data >"$seed/d/file"
    ln -s file "$seed/d/link"
    ln "$seed/d/file" "$seed/d/hard"
    : >"$seed/d/.wh.gone"
    : >"$seed/d/sub/.wh..wh..opq"
    tar -C "$seed" -cf corpus/layer/seed-plain.tar d
    tar -C "$seed" --format=gnu -cf corpus/layer/seed-gnu.tar d
    rm -rf "$seed"
fi
# Image import's metadata: the parts image_archive assembles into a layout (see its header): an
# OCI layout directory, a gzip'd OCI tar with a nested index, a docker save, one with links.
if [ ! -d corpus/image_archive ] || [ -z "$(ls -A corpus/image_archive 2>/dev/null)" ]; then
    seed=$(mktemp -d)
    mkdir -p corpus/image_archive "$seed/d"
    echo data >"$seed/d/file"
    tar -C "$seed" -b 1 -cf "$seed/layer.tar" d
    s=$'\n--\n'
    config='{"architecture":"@a","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["@0"]}}'
    manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@1","size":#1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"@0","size":#0}]}'
    index='{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@2","size":#2,"platform":{"architecture":"@a","os":"linux"}}]}'
    nested='{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@0","size":#0,"platform":{"architecture":"s390x","os":"linux"}},{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"@3","size":#3}]}'
    docker='[{"Config":"blobs/sha256/$1","RepoTags":["fuzz:latest"],"Layers":["blobs/sha256/$0"]}]'
    linked='[{"Config":"img/$1.json","Layers":["layer.tar"]},{"Config":"x","Layers":[]}]'
    links='img/$1.json -> ../blobs/sha256/$1'$'\n''layer.tar => blobs/sha256/$0'
    blobs() { cat "$seed/layer.tar"; printf '%s' "$s$config$s$manifest"; }
    { printf '\x04%s' "$index$s$s$s"; blobs; } >corpus/image_archive/seed-oci-dir
    { printf '\x02%s' "$nested$s$s$s"; blobs; printf '%s' "$s$index"; } >corpus/image_archive/seed-oci-nested
    { printf '\x01%s' "$s$docker$s$s"; blobs; } >corpus/image_archive/seed-docker
    { printf '\x03%s' "$s$linked$s$links$s"; blobs; } >corpus/image_archive/seed-links
    rm -rf "$seed"
fi
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    cargo fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked)' || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "fuzz: $target found a crash: see fuzz/artifacts/$target" >&2
        exit 1
    fi
done
