# shellcheck shell=bash
# Section "registry" of scripts/bench.sh, which sources it (run_user, log, $work, $results, $runs,
# $debian_tar come from there).
#
# pull  the Debian image as a three-layer image (tests/fixtures/oci-layers.sh, gzip layers as
#       skopeo pushes them) from a docker-registry on 127.0.0.1, into a ready-to-run image:
#       `nook pull` with a cold cache and with its blobs cached (the image removed), beside
#       `podman pull` (vfs) and beside `skopeo copy docker://… oci:` + `nook import`. Goals:
#       cold <= 0.5x podman, <= 0.7x skopeo + import; warm <= 0.2x podman; peak RSS of
#       `nook pull` <= podman's.

registry_runs=$((runs < 5 ? runs : 5))

# registry_case NAME PREPARE COMMAND: hyperfine (PREPARE before each run, untimed) into $results;
# prints the median in ms, or nothing when the command fails.
registry_case() {
    local name=$1 prepare=$2 cmd=$3 json=$work/registry-h.json s="registry: pull of Debian (3 layers) from 127.0.0.1"
    if ! run_user sh -c "$prepare; $cmd" >/dev/null 2>&1; then
        log "skipped (registry) $name: it failed once: $cmd"
        printf '%s\t%s\tfailed\t\t\n' "$s" "$name" >>"$results"
        return 0
    fi
    run_user hyperfine --warmup 1 --runs "$registry_runs" --prepare "$prepare" \
        --export-json "$json" "$cmd" >/dev/null 2>&1 || return 0
    jq -r --arg s "$s" --arg n "$name" \
        '.results[0] | [$s, $n, (.median*1000), (.min*1000), (.max*1000)] | @tsv' "$json" >>"$results"
    jq -r '.results[0].median*1000' "$json"
}

registry_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

registry_note() { printf '%s\t%s\t\t\t\t%s\n' "registry: pull of Debian (3 layers) from 127.0.0.1" "$1" "$2" >>"$results"; }

# Peak RSS in kB of a command (VAR=VALUE... PROGRAM ARGS) run once after PREPARE.
registry_rss() {
    run_user sh -c "$1" >/dev/null 2>&1 || true
    run_user /usr/bin/time -f %M env $2 2>&1 >/dev/null | tail -1 || true
}

registry_section() {
    if [ ! -s "$debian_tar" ] || ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null; then
        log "skipped registry: needs the Debian image, docker-registry and skopeo"
        return 0
    fi
    local dir=$work/registry port
    run_user mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run_user sh -c "cat > $dir/config.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/store
http:
  addr: 127.0.0.1:$port
YAML
    # Through a pid file: $! would be the subshell, not the registry.
    run_user sh -c "echo \$\$ > $dir/registry.pid; exec docker-registry serve $dir/config.yml" \
        >/dev/null 2>&1 &
    local job=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    log "registry: pushing Debian as three layers to 127.0.0.1:$port"
    run_user bash tests/fixtures/oci-layers.sh "$debian_tar" "$dir/layout" bookworm ./usr/share ./var
    run_user skopeo copy -q --dest-tls-verify=false "oci:$dir/layout:bookworm" \
        "docker://127.0.0.1:$port/library/debian:bookworm"
    local ref=127.0.0.1:$port/library/debian:bookworm st=$dir/storage st2=$dir/storage2
    local pod="podman --root $dir/podman --runroot /tmp/nook-bench-podrun --storage-driver vfs --cgroup-manager=cgroupfs --events-backend=file"
    local pull="NOOK_STORAGE=$st $work/nook pull -q --tls-verify=false $ref"
    local cold warm podman skopeo
    cold=$(registry_case "nook pull, cold cache" "chmod -R u+rwX $st 2>/dev/null; rm -rf $st" "$pull")
    warm=$(registry_case "nook pull, blobs cached" "NOOK_STORAGE=$st $work/nook rmi debian:bookworm >/dev/null 2>&1 || true" "$pull")
    podman=$(registry_case "podman pull (vfs)" "$pod rmi -a -f >/dev/null 2>&1 || true" \
        "$pod pull -q --tls-verify=false docker://$ref")
    skopeo=$(registry_case "skopeo copy to oci: + nook import" \
        "chmod -R u+rwX $st2 2>/dev/null; rm -rf $st2 $dir/oci" \
        "skopeo copy -q --src-tls-verify=false docker://$ref oci:$dir/oci:x && NOOK_STORAGE=$st2 $work/nook import -q $dir/oci deb")
    local skopeo_plus=${skopeo:-}
    registry_note "nook cold / podman" "$(registry_ratio "$cold" "$podman") (goal <= 0.5)"
    registry_note "nook cold / skopeo + import" "$(registry_ratio "$cold" "$skopeo_plus") (goal <= 0.7)"
    registry_note "nook warm / podman" "$(registry_ratio "$warm" "$podman") (goal <= 0.2)"
    local rss_nook rss_podman
    rss_nook=$(registry_rss "chmod -R u+rwX $st 2>/dev/null; rm -rf $st" "$pull")
    rss_podman=$(registry_rss "$pod rmi -a -f" "$pod pull -q --tls-verify=false docker://$ref")
    registry_note "peak RSS kB: nook pull / podman pull" "$rss_nook / $rss_podman (goal: nook <= podman)"
    log "registry: cold $cold ms, warm $warm ms, podman $podman ms, skopeo+import $skopeo_plus ms, RSS $rss_nook / $rss_podman kB"
    kill "$(cat "$dir/registry.pid")" 2>/dev/null || true
    wait "$job" 2>/dev/null || true
    run_user sh -c "$pod rmi -a -f >/dev/null 2>&1; chmod -R u+rwX $dir 2>/dev/null; rm -rf $dir /tmp/nook-bench-podrun" 2>/dev/null || true
}

registry_section
