# shellcheck shell=bash
# Section "concurrency" of scripts/bench.sh, which sources it (run_user, log, $work, $results,
# $runtime_dir, $out come from there). Issue 20's sweep: N containers started at once, N in
# $concurrency_levels, for each runtime below; every container runs /bin/true over busybox.
#
# Per level and runtime: total wall time from the first launch to the last exit, the median and
# p99 latency of one container (its own launch to its own exit, reaped as each ends), failures,
# and (as root) the peak memory of everything the launcher started together: a cgroup v1
# memory group holds the launcher, and its memory.max_usage_in_bytes is read (it counts page
# cache the starts create too, the same way for every runtime). Written to
# bench/concurrency.tsv and plotted as bench/concurrency.png (median and p99 against N).

concurrency_levels=${NOOK_BENCH_LEVELS:-"1 8 32 128 256"}
concurrency_tsv=$out/concurrency.tsv

concurrency_launcher=$work/launch-many.py
cat >"$concurrency_launcher" <<'PY'
import os, subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[2]
start, end, failed = {}, {}, 0
# Popen objects are kept: one that is collected reaps its child, and os.wait() would miss it.
children = []
t0 = time.monotonic()
for i in range(n):
    p = subprocess.Popen(["sh", "-c", cmd.replace("%i", str(i))], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start[p.pid] = time.monotonic()
    children.append(p)
while len(end) < n:
    pid, status = os.wait()
    if pid in start:
        end[pid] = time.monotonic()
        failed += status != 0
total = (time.monotonic() - t0) * 1000
lat = sorted((end[p] - start[p]) * 1000 for p in start)
p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
print(f"{total:.1f}\t{lat[len(lat) // 2]:.1f}\t{p99:.1f}\t{failed}")
PY
chmod 644 "$concurrency_launcher"

# concurrency_case NAME COMMAND_WITH_%i
concurrency_case() {
    local name=$1 cmd=$2 n line mem memcg
    for n in $concurrency_levels; do
        mem=
        memcg=/sys/fs/cgroup/memory/nook-bench-$$
        if [ "$(id -u)" = 0 ] && mkdir "$memcg" 2>/dev/null; then
            # Root moves the launcher in before it becomes the user.
            line=$(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$memcg" \
                "${as_user[@]}" "${user_env[@]}" python3 "$concurrency_launcher" "$n" "$cmd")
            mem=$(($(cat "$memcg/memory.max_usage_in_bytes") / 1024))
            rmdir "$memcg" 2>/dev/null || true
        else
            line=$(run_user python3 "$concurrency_launcher" "$n" "$cmd")
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$n" "$line" "$mem" >>"$concurrency_tsv"
        log "concurrency / $name / $n: total, median, p99 ms, failures: $line; peak ${mem:-?} KiB"
        sync
    done
}

printf 'case\tN\ttotal_ms\tmedian_ms\tp99_ms\tfailures\tpeak_kib\n' >"$concurrency_tsv"
b=$work/bundle-busybox
concurrency_case "nook run --rm" "$work/nook run --rm -q $work/busybox /bin/true"
concurrency_case "nook run --rm --userns single" "$work/nook run --rm -q --userns single $work/busybox /bin/true"
concurrency_case "nook run --bundle" "$work/nook --root $runtime_dir/nook run --bundle $b c%i"
concurrency_case "crun run --bundle" "crun --root $runtime_dir/crun run --bundle $b c%i"
concurrency_case "bwrap" "bwrap --unshare-all --ro-bind $work/busybox / --proc /proc --dev /dev /bin/true"

if command -v gnuplot >/dev/null; then
    gnuplot <<EOF
set terminal pngcairo size 900,560
set output "$out/concurrency.png"
set title "Latency of one container against containers started at once (busybox, /bin/true)"
set xlabel "containers started at once"
set ylabel "ms (launch to exit of one container)"
set logscale x 2
set logscale y
set key left top
set datafile separator "\t"
plot for [c in "nook_run_--rm nook_run_--rm_--userns_single nook_run_--bundle crun_run_--bundle bwrap"] \
    "< awk -F'\t' -v c='".c."' 'BEGIN{gsub(\"_\",\" \",c)} \$1==c' $concurrency_tsv" \
    using 2:4 with linespoints title c." median", \
    for [c in "nook_run_--rm nook_run_--rm_--userns_single nook_run_--bundle crun_run_--bundle bwrap"] \
    "< awk -F'\t' -v c='".c."' 'BEGIN{gsub(\"_\",\" \",c)} \$1==c' $concurrency_tsv" \
    using 2:5 with lines dashtype 2 title c." p99"
EOF
fi
