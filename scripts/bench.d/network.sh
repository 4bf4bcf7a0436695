# shellcheck shell=bash
# Section "network" of scripts/bench.sh, which sources it (run_user, log, time_case, $work,
# $results, $runs come from there; podman has the image busybox-img).
#
# throughput  iperf3 from the host to a server in the container through `-p 127.0.0.1:P:5201`:
#             nook with pasta, nook with slirp4netns, podman with slirp4netns (Debian 12's podman
#             4.3 has no pasta), and host loopback as the ceiling. Goal: nook >= podman with the
#             same helper.
# latency     1000 HTTP requests, one connection each, from the host to busybox httpd in the
#             container (median per request).
# start       `run --rm true` with a private network over `--network host`, nook and podman.
#             Goal: nook's extra cost <= podman's.
# Traffic stays on 127.0.0.1. The container borrows the host's iperf3 and C library (read-only
# binds), as tests/nested.rs does, so the busybox image serves every runtime.

net_podman=(podman --cgroup-manager=cgroupfs --events-backend=file)
net_libs=(-v /usr/bin/iperf3:/usr/bin/iperf3:ro -v /lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro
          -v /lib64:/lib64:ro)

# A free TCP port on 127.0.0.1, from the kernel.
net_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for something to accept on 127.0.0.1:$1.
net_wait() {
    python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

# net_iperf SECTION NAME PORT: 5 s of iperf3 to 127.0.0.1:PORT; appends Gbit/s (receiver).
net_iperf() {
    local gbits
    net_wait "$3" || { log "network: $2: nothing listens on $3"; printf '%s\t%s\tfailed\t\t\n' "$1" "$2" >>"$results"; return 0; }
    gbits=$(iperf3 -c 127.0.0.1 -p "$3" -t 5 -J 2>/dev/null |
        jq -r '.end.sum_received.bits_per_second / 1e9' 2>/dev/null || true)
    printf '%s\t%s\t%s\t\t\t(Gbit/s)\n' "$1" "$2" "${gbits:-failed}" >>"$results"
    log "network: $2: ${gbits:-failed} Gbit/s"
}

# net_latency SECTION NAME PORT: 1000 GETs, a new connection each; appends the median, min
# and max per request in ms.
net_latency() {
    net_wait "$3" || return 0
    python3 - "$1" "$2" "$3" >>"$results" <<'PY'
import socket, statistics, sys, time
section, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(1000):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
    times.append((time.perf_counter() - t0) * 1000)
print(f"{section}\t{name}\t{statistics.median(times):.3f}\t{min(times):.3f}\t{max(times):.3f}")
PY
    log "network: latency $2: $(tail -1 "$results" | cut -f3) ms"
}

net_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }
net_median() { awk -F'\t' -v s="$1" -v n="$2" '$1 == s && $2 == n { print $3 }' "$results" | tail -1; }

net_section() {
    local tput="network: iperf3 host -> container through -p (5 s)"
    local lat="network: 1000 connections host -> container httpd, per request"
    local start="network: run --rm true, private network vs host"
    local www=$work/net-www
    run_user mkdir -p "$www"
    run_user sh -c "echo hello > $www/index.html"

    # The ceiling: iperf3 on the host's loopback (not `-1`: the readiness probe is a connection).
    local p
    p=$(net_port)
    run_user iperf3 -s -D -B 127.0.0.1 -p "$p" -I "$work/net-iperf3.pid" >/dev/null 2>&1
    net_iperf "$tput" "host loopback (ceiling)" "$p"
    run_user sh -c "kill \$(cat $work/net-iperf3.pid)" 2>/dev/null || true

    local nopasta=$work/net-nopasta
    run_user mkdir -p "$nopasta"
    for tool in newuidmap newgidmap slirp4netns; do
        run_user ln -sf "$(command -v "$tool")" "$nopasta/$tool"
    done
    # nook, once with pasta and once where only slirp4netns is on PATH.
    local helper path
    for helper in pasta slirp4netns; do
        path=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
        [ "$helper" = slirp4netns ] && path=$nopasta
        p=$(net_port)
        run_user env PATH="$path" "$work/nook" run -d -q --name "net-$helper" "${net_libs[@]}" \
            -p "127.0.0.1:$p:5201" "$work/busybox" /usr/bin/iperf3 -s >/dev/null
        net_iperf "$tput" "nook ($helper)" "$p"
        run_user "$work/nook" rm -f "net-$helper" >/dev/null 2>&1 || true
        p=$(net_port)
        run_user env PATH="$path" "$work/nook" run -d -q --name "web-$helper" -v "$www:/www:ro" \
            -p "127.0.0.1:$p:80" "$work/busybox" httpd -f -h /www >/dev/null
        net_latency "$lat" "nook ($helper)" "$p"
        run_user "$work/nook" rm -f "web-$helper" >/dev/null 2>&1 || true
    done
    if command -v podman >/dev/null; then
        p=$(net_port)
        run_user "${net_podman[@]}" run -d --name net-podman --network slirp4netns "${net_libs[@]}" \
            -p "127.0.0.1:$p:5201" busybox-img /usr/bin/iperf3 -s >/dev/null 2>&1 || true
        net_iperf "$tput" "podman (slirp4netns)" "$p"
        run_user "${net_podman[@]}" rm -f net-podman >/dev/null 2>&1 || true
        p=$(net_port)
        run_user "${net_podman[@]}" run -d --name web-podman --network slirp4netns -v "$www:/www:ro" \
            -p "127.0.0.1:$p:80" busybox-img httpd -f -h /www >/dev/null 2>&1 || true
        net_latency "$lat" "podman (slirp4netns)" "$p"
        run_user "${net_podman[@]}" rm -f web-podman >/dev/null 2>&1 || true
    fi
    printf '%s\t%s\t\t\t\t%s\n' "$tput" "nook / podman, slirp4netns" \
        "$(net_ratio "$(net_median "$tput" "nook (slirp4netns)")" "$(net_median "$tput" "podman (slirp4netns)")") (goal >= 1)" >>"$results"

    local saved_runs=$runs
    runs=$((runs < 10 ? runs : 10))
    time_case "$start" "nook --network host" "$work/nook run --rm -q --network host $work/busybox /bin/true"
    time_case "$start" "nook --network pasta" "$work/nook run --rm -q --network pasta $work/busybox /bin/true"
    time_case "$start" "nook --network slirp4netns" "$work/nook run --rm -q --network slirp4netns $work/busybox /bin/true"
    if command -v podman >/dev/null; then
        time_case "$start" "podman --network host" "${net_podman[*]} run --rm --network host busybox-img /bin/true"
        time_case "$start" "podman --network slirp4netns" "${net_podman[*]} run --rm --network slirp4netns busybox-img /bin/true"
    fi
    runs=$saved_runs
    local nh np ns ph ps
    nh=$(net_median "$start" "nook --network host")
    np=$(net_median "$start" "nook --network pasta")
    ns=$(net_median "$start" "nook --network slirp4netns")
    ph=$(net_median "$start" "podman --network host")
    ps=$(net_median "$start" "podman --network slirp4netns")
    printf '%s\t%s\t\t\t\t%s\n' "$start" "extra cost, ms" \
        "nook pasta +$(awk -v a="$np" -v b="$nh" 'BEGIN{printf "%.1f", a-b}'), nook slirp4netns +$(awk -v a="$ns" -v b="$nh" 'BEGIN{printf "%.1f", a-b}'), podman slirp4netns +$(awk -v a="$ps" -v b="$ph" 'BEGIN{printf "%.1f", a-b}') (goal: nook's <= podman's)" >>"$results"
}

net_section
