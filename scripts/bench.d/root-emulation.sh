# shellcheck shell=bash
# Benchmark section: root emulation for a user without subordinate ids (issue 16). Sourced by
# scripts/bench.sh after its startup cases (with $work, $runs, $results, $debian_tar, run_user
# and log set), or run alone, which prints the rows:
#   sudo bash scripts/bench.d/root-emulation.sh [RUNS]
# Every case runs as a user without a subordinate range (NOOK_BENCH_USER_NOSUB, default
# nookbench-nosub, created as root), so each container maps one id.
#
# install  `apt-get install -y make` in the Debian image, offline: the package lists and the .debs
#          are fetched once into an image before timing (`--no-download` then), so the network
#          is not measured. Tier 1 (seccomp), tier 2 (notify), tier 1 with the report, and
#          `fakeroot` and `proot -0` inside a nook container with `--root-emulation off` (proot
#          with `--security-opt seccomp=unconfined`: under nook's profile its tracee gets SIGSYS);
#          Charliecloud's `ch-run --seccomp` where the installed ch-run has it (Debian 12's 0.31
#          does not: the row says so).
# start    `nook run --rm /bin/true` of the Debian image with emulation off, tier 1, tier 2 and
#          the report (goal for tier 1: within noise of off).
# per call one process making 10000 chown calls (perl), and 10000 stat calls of a file with a
#          recorded owner, per mode: the difference to tier 1 over 10000 is the cost of one call
#          through the supervisor.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cd "$(dirname "$0")/../.."
    runs=${1:-5}
    debian_tar=/var/tmp/nook-test-fixtures/debian-bookworm.tar
    log() { echo "bench: $*" >&2; }
    work=$(mktemp -d /var/tmp/nook-bench-rootemu.XXXXXX)
    chmod 755 "$work"
    results=$work/results.tsv
    : >"$results"
    nook_bin=$(cargo build --release --quiet --message-format=json-render-diagnostics |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    install -m 755 "$nook_bin" "$work/nook"
    rootemu_alone=true
else
    rootemu_alone=false
fi

rootemu_user=${NOOK_BENCH_USER_NOSUB:-nookbench-nosub}
rootemu_runs=$((runs < 5 ? runs : 5))
rootemu_as=()
if [ "$(id -u)" = 0 ]; then
    if ! id "$rootemu_user" >/dev/null 2>&1; then
        HOST_SCRIPT=bench.sh
        # shellcheck source=scripts/lib/host.sh
        . scripts/lib/host.sh
        ensure_user_without_subids "$rootemu_user"
    fi
    rootemu_as=(runuser -u "$rootemu_user" --)
fi
rootemu_dir=$work/rootemu
mkdir -p "$rootemu_dir/home" "$rootemu_dir/storage"
[ "$(id -u)" = 0 ] && chown -R "$rootemu_user:" "$rootemu_dir"
rootemu_run() {
    "${rootemu_as[@]}" env -i "HOME=$rootemu_dir/home" "NOOK_STORAGE=$rootemu_dir/storage" \
        "USER=$rootemu_user" "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" "$@"
}

# rootemu_case SECTION NAME COMMAND [RUNS]: hyperfine median/min/max in ms as a row of $results.
rootemu_case() {
    local section=$1 name=$2 cmd=$3 n=${4:-$rootemu_runs} json=$rootemu_dir/h.json
    if ! rootemu_run sh -c "$cmd" >/dev/null 2>&1; then
        log "skipped ($section) $name: it failed once: $cmd"
        printf '%s\t%s\tfailed\t\t\t%s\n' "$section" "$name" "failed once" >>"$results"
        return 0
    fi
    rootemu_run hyperfine -N --warmup 1 --runs "$n" --export-json "$json" "$cmd" >/dev/null 2>&1
    jq -r --arg s "$section" --arg n "$name" \
        '.results[0] | [$s, $n, (.median*1000), (.min*1000), (.max*1000)] | @tsv' "$json" >>"$results"
    log "$section / $name: $(tail -1 "$results" | cut -f3 | xargs printf '%.1f') ms"
}

rootemu_median() { # SECTION NAME
    awk -F'\t' -v s="$1" -v n="$2" '$1 == s && $2 == n { print $3 }' "$results" | tail -1
}

rootemu_section() {
    local nook="$work/nook" img=rootemu
    log "root emulation: preparing the image (apt lists, fakeroot, proot, make's .debs: online once)"
    rootemu_run "$nook" import -q "$debian_tar" rootemu-base
    if ! rootemu_run "$nook" run -q --name rootemu-prep --root-emulation seccomp rootemu-base sh -c \
        'apt-get update -qq && apt-get install -y -qq fakeroot proot >/dev/null &&
         apt-get install -y -qq --download-only make >/dev/null' >&2; then
        log "root emulation: preparing the image failed (no network?); section skipped"
        printf 'root emulation\tpreparation\tfailed\t\t\tapt-get update failed\n' >>"$results"
        return 0
    fi
    rootemu_run "$nook" commit -q rootemu-prep "$img" >/dev/null
    rootemu_run "$nook" rm rootemu-prep >/dev/null

    local s="root emulation: apt-get install -y make (offline, one-id user)"
    local apt="apt-get install -y -qq --no-download -o APT::Sandbox::User=root make"
    rootemu_case "$s" "nook tier 1 (seccomp)" "$nook run --rm -q --root-emulation seccomp $img $apt"
    rootemu_case "$s" "nook tier 2 (notify)" "$nook run --rm -q --root-emulation notify $img $apt"
    rootemu_case "$s" "nook tier 1 + --root-emulation-report" \
        "$nook run --rm -q --root-emulation seccomp --root-emulation-report $img $apt"
    rootemu_case "$s" "fakeroot in nook (--root-emulation off)" \
        "$nook run --rm -q --root-emulation off $img fakeroot $apt"
    # proot's tracee dies of SIGSYS under nook's default profile: it runs unconfined.
    rootemu_case "$s" "proot -0 in nook (--root-emulation off, seccomp=unconfined)" \
        "$nook run --rm -q --root-emulation off --security-opt seccomp=unconfined $img proot -0 $apt"
    if command -v ch-run >/dev/null && USER=x ch-run --help 2>&1 | grep -q -- '--seccomp'; then
        rootemu_case "$s" "ch-run --seccomp -W" \
            "ch-run --seccomp -W $rootemu_dir/storage/images/$img/rootfs -- $apt"
    else
        printf '%s\t%s\t\t\t\t%s\n' "$s" "ch-run --seccomp" \
            "not measured: ch-run $(USER=x ch-run --version 2>&1 | tail -1) has no --seccomp mode" \
            >>"$results"
    fi
    local t1 t2
    t1=$(rootemu_median "$s" "nook tier 1 (seccomp)")
    for other in "nook tier 2 (notify)" "fakeroot in nook (--root-emulation off)" \
        "proot -0 in nook (--root-emulation off, seccomp=unconfined)"; do
        t2=$(rootemu_median "$s" "$other")
        [ -n "$t1" ] && [ -n "$t2" ] && [ "$t2" != failed ] &&
            printf '%s\t%s / tier 1\t\t\t\t%s\n' "$s" "$other" \
                "$(awk -v a="$t2" -v b="$t1" 'BEGIN { printf "%.2f", a / b }')" >>"$results"
    done

    s="root emulation: start, nook run --rm /bin/true (Debian, one-id user)"
    rootemu_case "$s" "--root-emulation off" "$nook run --rm -q --root-emulation off $img /bin/true" "$runs"
    rootemu_case "$s" "tier 1 (seccomp)" "$nook run --rm -q --root-emulation seccomp $img /bin/true" "$runs"
    rootemu_case "$s" "tier 2 (notify)" "$nook run --rm -q --root-emulation notify $img /bin/true" "$runs"
    rootemu_case "$s" "tier 1 + report" \
        "$nook run --rm -q --root-emulation seccomp --root-emulation-report $img /bin/true" "$runs"

    s="root emulation: 10000 calls in one process (perl)"
    # Alternating owners: every chown changes the record (a repeated same chown writes nothing).
    mkdir -p "$rootemu_dir/perl"
    cat >"$rootemu_dir/perl/chowns.pl" <<'PL'
open F, ">/tmp/f"; close F; chown 5 + $_ % 2, 5, "/tmp/f" for 1..10000;
PL
    cat >"$rootemu_dir/perl/stats.pl" <<'PL'
open F, ">/tmp/f"; close F; chown 5, 5, "/tmp/f"; stat "/tmp/f" for 1..10000;
PL
    chmod -R a+rX "$rootemu_dir/perl"
    local chowns="-v $rootemu_dir/perl:/bench:ro $img perl /bench/chowns.pl"
    local stats="-v $rootemu_dir/perl:/bench:ro $img perl /bench/stats.pl"
    for mode in off seccomp notify; do
        rootemu_case "$s" "chown x10000, $mode" \
            "$nook run --rm -q --root-emulation $mode $chowns"
    done
    for mode in seccomp notify; do
        rootemu_case "$s" "stat x10000 (recorded owner), $mode" \
            "$nook run --rm -q --root-emulation $mode $stats"
    done
    for what in "chown x10000" "stat x10000 (recorded owner)"; do
        t1=$(rootemu_median "$s" "$what, seccomp")
        t2=$(rootemu_median "$s" "$what, notify")
        [ -n "$t1" ] && [ -n "$t2" ] && [ "$t2" != failed ] &&
            printf '%s\t%s: tier 2 cost per call\t\t\t\t%s\n' "$s" "$what" \
                "$(awk -v a="$t2" -v b="$t1" 'BEGIN { printf "%.1f us per call over tier 1", (a - b) * 1000 / 10000 }')" \
                >>"$results"
    done
    rootemu_run "$nook" rmi "$img" rootemu-base >/dev/null 2>&1 || true
}

rootemu_section
if $rootemu_alone; then
    column -t -s $'\t' "$results"
    rootemu_run sh -c "chmod -R u+rwX '$rootemu_dir'; rm -rf '$rootemu_dir'" 2>/dev/null || true
    rm -rf "$work"
fi
