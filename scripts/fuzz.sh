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
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    cargo fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked)' || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "fuzz: $target found a crash: see fuzz/artifacts/$target" >&2
        exit 1
    fi
done
