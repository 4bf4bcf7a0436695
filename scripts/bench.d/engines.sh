# shellcheck shell=bash
# Section "engines" of scripts/bench.sh, which sources it (run_user, time_case, log, $work,
# $results, $runs, $repo come from there). Needs root: containerd runs as root, and the Slurm
# daemons are started by root as tests/engines.rs starts them.
#
# ctr     `ctr run --rm IMAGE true` through a private containerd 1.6 (its own root, state and
#         socket under $work) with the runc v2 shim's BinaryName set per container
#         (`--runc-binary`) to runc, crun and nook. containerd runs them as root.
# srun    `srun --container=BUNDLE true` as the bench user on a one-node Slurm 22.05 cluster on
#         127.0.0.1 (munged, slurmctld, slurmd in the foreground), oci.conf pointing at crun or
#         at nook (configs/slurm-oci.conf), rootless.

engines_ok=true
for tool in containerd ctr munged slurmctld slurmd srun; do
    if ! command -v "$tool" >/dev/null; then
        log "engines: skipped, $tool is missing (packages containerd, munge, slurm-wlm)"
        engines_ok=false
    fi
done
[ "$(id -u)" = 0 ] || { log "engines: skipped, needs root"; engines_ok=false; }

engines_pids=()
engines_stop() {
    local pid
    for pid in "${engines_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${engines_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    engines_pids=()
}

# time_root_case SECTION NAME COMMAND: time_case, run as root (for ctr).
time_root_case() {
    local saved=("${as_user[@]}")
    as_user=()
    time_case "$@"
    as_user=("${saved[@]}")
    # hyperfine's export, written as root, must stay writable for the user's cases.
    rm -f "$work/h.json"
}

engines_containerd() {
    local d=$work/containerd sock
    mkdir -p "$d"
    sock=$d/containerd.sock
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_cgroup = true
EOF
    containerd --config "$d/config.toml" >"$d/log" 2>&1 &
    engines_pids+=($!)
    local i
    for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    local ctr=(ctr --address "$sock" --namespace bench)
    run_user "$work/nook" import -q "$work/busybox" engines-bb >/dev/null
    run_user "$work/nook" export --format oci -o "$work/bb-oci.tar" engines-bb >/dev/null
    "${ctr[@]}" images import --index-name docker.io/library/bb:latest "$work/bb-oci.tar" >/dev/null
    local rt bin
    for rt in runc crun nook; do
        case $rt in
            nook) bin=$work/nook ;;
            *) bin=$(command -v "$rt") ;;
        esac
        time_root_case ctr "ctr run --rm ($rt)" \
            "${ctr[*]} run --rm --runc-binary $bin docker.io/library/bb:latest bench-$rt /bin/true"
    done
    engines_stop
}

engines_slurm() {
    local d=$work/slurm host ctld slurmd
    mkdir -p "$d"/{munge,state,spool,log}
    chmod 755 "$d" "$d/munge"
    head -c 1024 /dev/urandom >"$d/munge/munge.key"
    chmod 400 "$d/munge/munge.key"
    host=$(hostname -s)
    ctld=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    slurmd=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$d/slurm.conf" <<EOF
ClusterName=nookbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=$ctld
SlurmdPort=$slurmd
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.sock
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/linear
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    munged --foreground --force --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" \
        --pid-file="$d/munge/munged.pid" --seed-file="$d/munge/munged.seed" \
        --log-file="$d/munge/munged.log" >"$d/log/munged.out" 2>&1 &
    engines_pids+=($!)
    sleep 0.5
    SLURM_CONF=$d/slurm.conf slurmctld -D -i >"$d/log/slurmctld.out" 2>&1 &
    engines_pids+=($!)
    SLURM_CONF=$d/slurm.conf slurmd -D >"$d/log/slurmd.out" 2>&1 &
    engines_pids+=($!)
    local i
    for i in $(seq 100); do
        SLURM_CONF=$d/slurm.conf sinfo -h -o %t 2>/dev/null | grep -q idle && break
        sleep 0.2
    done
    mkdir -p "$d/oci-state" && chmod 1777 "$d/oci-state"
    user_env+=("SLURM_CONF=$d/slurm.conf")
    # Slurm points root.path at the bundle's own rootfs/ when it rewrites config.json.
    local b=$work/bundle-slurm
    run_user mkdir -p "$b"
    run_user sh -c "jq '.root.path=\"rootfs\"' '$work/bundle-busybox/config.json' > '$b/config.json'"
    run_user ln -sfn "$work/busybox" "$b/rootfs"
    local rt bin
    for rt in crun nook; do
        case $rt in
            nook) bin=$work/nook ;;
            *) bin=$(command -v "$rt") ;;
        esac
        sed -e "s|/usr/local/bin/nook|$bin|g" -e "s|/run/nook-slurm|$d/oci-state|g" \
            "$repo/configs/slurm-oci.conf" >"$d/oci.conf"
        time_case srun "srun --container ($rt)" "srun --container=$b /bin/true"
    done
    unset 'user_env[-1]'
    engines_stop
}

if $engines_ok; then
    trap engines_stop EXIT
    engines_containerd
    engines_slurm
    trap - EXIT
fi
