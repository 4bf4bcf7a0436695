# Sourced by scripts/demo.sh, scripts/test.sh and scripts/bench.sh: the one list of what
# building nook needs from the host, the checks that say what is missing and how to get it, and
# the unprivileged users the demo and the tests run nook as.
# Callers `set -euo pipefail` and define nothing these names use.

# Debian packages the build needs: cargo compiles libseccomp's binding against libseccomp.a
# (libseccomp-dev, found through pkg-config), the static link needs libc.a (libc6-dev) and a C
# compiler and `nm` (gcc, which brings binutils; scripts/link-hot-first uses both).
BUILD_PACKAGES=(gcc libc6-dev libseccomp-dev pkg-config)

host_say() {
    echo "${HOST_SCRIPT:-nook}: $*" >&2
}

# The packages of "$@" that dpkg does not list as installed.
missing_packages() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            echo "$pkg"
    done
}

# Installs the missing packages of "$@" as root. As another user it installs nothing: it names
# the exact command and fails, before anything is built.
ensure_packages() {
    local missing
    if ! command -v dpkg-query >/dev/null 2>&1; then
        host_say "not a Debian-like host (no dpkg-query): make sure these are installed: $*"
        return 0
    fi
    mapfile -t missing < <(missing_packages "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        host_say "missing Debian packages: ${missing[*]}"
        host_say "install them, then run this again:"
        host_say "    sudo apt-get install -y ${missing[*]}"
        return 1
    fi
    host_say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists yet; a stale list fails with 404s: update first.
    apt-get update -qq >/dev/null || {
        host_say "apt-get update failed; the packages cannot be installed"
        return 1
    }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
        host_say "apt-get install ${missing[*]} failed"
        return 1
    }
}

# cargo on PATH, or rustup's default place added to PATH (sudo and su drop ~/.cargo/bin).
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 && return 0
    host_say "cargo is not installed (or not on PATH): nook builds with Rust 1.80 or newer."
    host_say "install the toolchain with rustup (see rustup.rs), open a new shell, and run this again;"
    host_say "Debian's own 'cargo' package is older than nook needs."
    return 1
}

# Everything the build needs: packages first (they are what fails first), then cargo.
ensure_build_prereqs() {
    ensure_packages "${BUILD_PACKAGES[@]}" && ensure_cargo
}

# --- users -------------------------------------------------------------------------------

# First id after every range already given out in /etc/subuid and /etc/subgid, rounded up to a
# multiple of 65536, and at least 100000 (as useradd picks them).
free_subid_start() {
    awk -F: 'NF >= 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
                 end = $2 + $3; if (end > max) max = end
             }
             END {
                 if (max < 100000) { print 100000; exit }
                 print int((max + 65535) / 65536) * 65536
             }' /etc/subuid /etc/subgid
}

# Whether a subid file has a line for a user, by name or by uid.
has_subids() {
    local file=$1 user=$2 uid
    uid=$(id -u "$user")
    grep -qE "^(${user}|${uid}):" "$file"
}

# As root: an unprivileged user NAME with a home, and a 65536-id subordinate range in both
# files (given a free one if useradd did not).
ensure_user_with_subids() {
    local user=$1 start end
    touch /etc/subuid /etc/subgid
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    if ! has_subids /etc/subuid "$user" || ! has_subids /etc/subgid "$user"; then
        start=$(free_subid_start)
        end=$((start + 65535))
        has_subids /etc/subuid "$user" || usermod --add-subuids "$start-$end" "$user"
        has_subids /etc/subgid "$user" || usermod --add-subgids "$start-$end" "$user"
    fi
}

# As root: an unprivileged user NAME with a home and no subordinate ids at all.
ensure_user_without_subids() {
    local user=$1 uid
    touch /etc/subuid /etc/subgid
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    uid=$(id -u "$user")
    sed -i -E "/^(${user}|${uid}):/d" /etc/subuid /etc/subgid
}

# --- crun ------------------------------------------------------------------------------------

# Debian 12's crun 1.8.1 refuses every container on a host whose cgroups are in hybrid mode with
# a controller left on cgroup2 ("cgroups in hybrid mode not supported, drop all controllers from
# cgroupv2"). Mounting each such controller as a cgroup v1 hierarchy leaves cgroup2 empty, and
# crun runs. For the peers the tests and benchmarks compare with: nook itself needs none of it.
make_crun_runnable() {
    local unified=/sys/fs/cgroup/unified controller
    [ -f "$unified/cgroup.controllers" ] || return 0
    for controller in $(cat "$unified/cgroup.controllers"); do
        host_say "moving the $controller cgroup controller to v1 for crun (hybrid cgroups)"
        mkdir -p "/sys/fs/cgroup/$controller"
        mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" ||
            host_say "could not move $controller to cgroup v1: crun may refuse to run"
    done
}
