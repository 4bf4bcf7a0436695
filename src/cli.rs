//! Command-line arguments. No logic beyond parsing.

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::path::PathBuf;

/// `--version` output, shaped like runc's so engines can read the spec version.
const VERSION: &str = concat!("version ", env!("CARGO_PKG_VERSION"), "\nspec: ", "1.2.0");

const AFTER_HELP: &str = "\
Two faces, one binary:
  Human (podman-like), listed first above:
          nook run [OPTIONS] IMAGE|DIR [CMD...]   ps   rm   logs   stop   restart   exec   top
          cp   import   images   tag   rmi   commit   diff   export   inspect   info   version
          system df|prune   container ls|rm|inspect   image ls|rm|import|inspect   completion
  OCI runtime (runc-compatible, for podman/conmon and other engines), listed after them:
          create start state kill delete list features spec, run --bundle/-b, exec, ps ID
Which face a verb shows is decided by its arguments only:
  run     with --bundle/-b it is the OCI `run` (the positional is the container id);
          without, the positional is a root filesystem directory.
  ps      with a container id it is the OCI `ps` (processes of that container under --root);
          without, it lists the human store's containers.
  exec, kill
          look the id up under --root first; a name not there is looked up in the human store
          (the containers of `nook ps`, foreground or detached).

Storage: $NOOK_STORAGE, else $XDG_DATA_HOME/nook, else ~/.local/share/nook.
OCI state (--root): $XDG_RUNTIME_DIR/nook, else /tmp/nook-UID (mode 0700).";

/// Where `nook run --help` puts the options of the OCI face, apart from the human ones.
const OCI_HEADING: &str = "OCI runtime options (with --bundle, for engines)";

#[derive(Parser, Debug)]
#[command(
    name = "nook",
    version = VERSION,
    about = "Rootless containers: one writable layer over a plain-directory image, no daemon",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// runc's global options.
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options (runc's, for engines)")]
pub struct GlobalArgs {
    /// Directory of the OCI runtime state
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also write errors and warnings to this file (engines read it)
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of --log
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log what nook does, not only errors
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility; nook manages no cgroups yet
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for crun compatibility (`cgroupfs`, `systemd`, `disabled`); nook manages no
    /// cgroups yet
    #[arg(long, global = true, hide = true, value_name = "MANAGER")]
    pub cgroup_manager: Option<String>,
    /// Accepted for runc compatibility; nook is always rootless
    #[arg(long = "rootless", hide = true, value_name = "true|false|auto")]
    pub rootless_mode: Option<String>,
    /// Accepted for runc compatibility; nook has no checkpointing
    #[arg(long, hide = true, value_name = "PATH")]
    pub criu: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    // Human verbs come first in `--help`, the OCI-only verbs after them (display_order 100+).
    /// Run a command in a new container made from a root filesystem directory (or, with
    /// --bundle, run an OCI bundle: create + start, and wait unless --detach)
    Run(Box<RunArgs>),
    /// List containers (with a container id: the processes of that OCI container)
    Ps(PsArgs),
    /// Remove containers and their writable layers
    Rm(RmArgs),
    /// Print what a detached container wrote to stdout and stderr
    Logs(LogsArgs),
    /// Stop a running container: SIGTERM, then SIGKILL after a grace period
    Stop(StopArgs),
    /// List a container's published ports (`80/tcp -> 0.0.0.0:8080`), or where one goes
    Port(PortArgs),
    /// Import a directory, tarball, OCI image layout or docker save archive as an image
    Import(ImportArgs),
    /// Pull an image from a registry into a flat image (blobs cached, resumable, verified)
    Pull(PullArgs),
    /// Push an image to a registry as a one-layer OCI image
    Push(PushArgs),
    /// Log in to a registry: check the credentials, then keep them where podman does
    Login(LoginArgs),
    /// Forget the credentials kept for a registry
    Logout(LogoutArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Build an image from a Containerfile (or Dockerfile), with a step cache
    Build(BuildArgs),
    /// Make a new image from a container: its image with the container's changes
    Commit(CommitArgs),
    /// List what a container changed: A (added), C (changed), D (deleted)
    Diff(DiffArgs),
    /// Write an image's or a container's files as a tar archive or an OCI image archive
    Export(ExportArgs),
    /// Check what this machine offers nook (namespaces, ids, fuse, storage, backend choice)
    Info(InfoArgs),
    /// Run a command in a running container (OCI, or one of `nook ps`)
    Exec(Box<ExecArgs>),
    /// OCI: create a container from a bundle; its process waits for `start`
    #[command(display_order = 100)]
    Create(CreateArgs),
    /// OCI: start the process of a created container
    #[command(display_order = 101)]
    Start(IdArg),
    /// OCI: print the state of a container as JSON
    #[command(display_order = 102)]
    State(IdArg),
    /// Send a signal to a container's process (an OCI container, or one of `nook ps`)
    Kill(KillArgs),
    /// OCI: delete a container's state (and the container, with --force)
    #[command(display_order = 103)]
    Delete(DeleteArgs),
    /// OCI: list the containers under --root
    #[command(display_order = 104)]
    List(ListArgs),
    /// OCI: write a config.json for a bundle
    #[command(display_order = 105)]
    Spec(SpecArgs),
    /// OCI: print the features this runtime supports, as JSON
    #[command(display_order = 106)]
    Features,
    /// OCI: freeze every process of a container (needs its cgroup: a delegated cgroup v2)
    Pause(IdArg),
    /// OCI: thaw a paused container
    Resume(IdArg),
    /// OCI: change a container's cgroup limits (`--resources FILE|-` or the flags)
    Update(UpdateArgs),
    /// Print nook's version and the OCI runtime-spec version it implements
    Version,
    /// Print containers or images as JSON (a name is looked up as a container, then an image)
    Inspect(InspectArgs),
    /// Container verbs as podman groups them: ls (ps), rm, inspect
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Image verbs as podman groups them: ls (images), rm (rmi), import, pull, inspect, prune (the blob cache)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Give an image another name: both names are the same image (no copy); `nook rmi` of
    /// one name keeps the others
    Tag(TagArgs),
    /// List the processes of a running container
    Top(TopArgs),
    /// Copy files between a container (running or stopped) and the host, both ways
    Cp(CpArgs),
    /// Stop a container (if it runs) and start it again in the background, over the same
    /// writable layer
    Restart(RestartArgs),
    /// Disk use and clean-up of the whole store: df, prune
    #[command(subcommand)]
    System(SystemCommand),
    /// Print a shell completion script (bash, zsh or fish) made from nook's own arguments
    Completion(CompletionArgs),
    /// Write man pages for nook and each of its verbs into a directory
    #[command(hide = true)]
    GenerateMan(GenerateManArgs),
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// The image (a name of `nook images`)
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The new names, NAME or NAME:TAG
    #[arg(required = true, value_name = "NEW[:TAG]")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers (names or ids)
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// CONTAINER:PATH, a host path, or `-` for a tar archive on stdin (unpacked into the
    /// container's directory PATH)
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// CONTAINER:PATH, a host path, or `-` for a tar archive on stdout
    #[arg(value_name = "DESTINATION")]
    pub destination: String,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// A running container (name or id, see `nook ps`)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Show the disk space images and containers take, files shared between images counted
    /// once
    Df(DfArgs),
    /// Remove stopped containers (and, with -a, images no container uses)
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct DfArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also list each image and container
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Also remove every image no container uses
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal)
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct GenerateManArgs {
    /// Directory to write nook.1 and nook-VERB.1 into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InspectType {
    Container,
    Image,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Look only among containers or only among images
    #[arg(long = "type", value_enum, value_name = "container|image")]
    pub kind: Option<InspectType>,
    /// Container or image names (or container ids)
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers (as `nook ps`)
    #[command(visible_aliases = ["list", "ps"])]
    Ls(PsArgs),
    /// Remove containers (as `nook rm`)
    Rm(RmArgs),
    /// Print containers as JSON
    Inspect(InspectArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images (as `nook images`)
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Remove images (as `nook rmi`)
    Rm(RmiArgs),
    /// Import an image (as `nook import`)
    Import(ImportArgs),
    /// Pull an image (as `nook pull`)
    Pull(PullArgs),
    /// Remove every cached registry blob (pulled images stay)
    Prune,
    /// Print images as JSON
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// Container id under --root
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json)
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub oci: OciCreateArgs,
    /// Id of the new container (unique under --root)
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Options `create` and OCI `run` share.
#[derive(Args, Debug, Default)]
pub struct OciCreateArgs {
    /// Write the container's pid to this file
    #[arg(long, value_name = "FILE", help_heading = OCI_HEADING)]
    pub pid_file: Option<PathBuf>,
    /// Send the terminal's master over this Unix socket (SCM_RIGHTS)
    #[arg(long, value_name = "PATH", help_heading = OCI_HEADING)]
    pub console_socket: Option<PathBuf>,
    /// Pass descriptors 3..3+N to the container's process
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = OCI_HEADING)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility: nook always uses pivot_root in its own mount namespace
    #[arg(long, help_heading = OCI_HEADING)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility: nook creates no session keyring
    #[arg(long, help_heading = OCI_HEADING)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility
    #[arg(long, hide = true, help_heading = OCI_HEADING)]
    pub no_subreaper: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container, not only its first
    #[arg(short, long)]
    pub all: bool,
    /// Container id under --root (OCI), else a container name of `nook ps`
    #[arg(value_name = "ID|NAME")]
    pub id: String,
    /// Signal name (TERM, SIGKILL) or number [default: SIGTERM for an OCI container, SIGKILL
    /// for one of `nook ps`, as podman]
    #[arg(value_name = "SIGNAL", conflicts_with = "signal_flag")]
    pub signal: Option<String>,
    /// The signal, as podman spells it
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    pub signal_flag: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container first if it still runs
    #[arg(short, long)]
    pub force: bool,
    /// Container id under --root
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The new `linux.resources` as JSON (runtime-spec), from a file or `-` for stdin
    #[arg(short, long, value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Maximum number of processes (`pids.max`)
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Memory limit in bytes (`memory.max`)
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<i64>,
    /// Memory plus swap limit in bytes, as runc counts it
    #[arg(long, value_name = "BYTES")]
    pub memory_swap: Option<i64>,
    /// Memory soft limit in bytes (`memory.low`)
    #[arg(long, value_name = "BYTES")]
    pub memory_reservation: Option<i64>,
    /// CPU time per period, in microseconds (`cpu.max`)
    #[arg(long, value_name = "US")]
    pub cpu_quota: Option<i64>,
    /// CPU period, in microseconds
    #[arg(long, value_name = "US")]
    pub cpu_period: Option<u64>,
    /// CPU shares (v1 scale, converted to `cpu.weight`)
    #[arg(long, value_name = "N")]
    pub cpu_share: Option<u64>,
    /// CPUs the container may use (`cpuset.cpus`)
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use (`cpuset.mems`)
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Container id under --root
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only ids
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// A spec for a rootless container (user namespace mapping you to root)
    #[arg(long)]
    pub rootless: bool,
    /// Where to write config.json
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// JSON file with the process to run (runtime-spec `process`); replaces the other options
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Leave the process running and return at once
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid to this file
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Send the terminal's master over this Unix socket (SCM_RIGHTS)
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Give the process a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Relay stdin to the terminal (with --tty)
    #[arg(short, long)]
    pub interactive: bool,
    /// Working directory inside the container
    #[arg(short = 'w', long, visible_alias = "workdir", value_name = "DIR")]
    pub cwd: Option<String>,
    /// Set an environment variable
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// UID[:GID] inside the container
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Add a capability (CAP_NET_RAW or NET_RAW)
    #[arg(short, long = "cap", value_name = "CAP")]
    pub caps: Vec<String>,
    /// Additional gids
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// Set no_new_privs for the process
    #[arg(long)]
    pub no_new_privs: bool,
    /// Pass descriptors 3..3+N to the process
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility (no AppArmor/SELinux here)
    #[arg(long, hide = true, value_name = "LABEL")]
    pub process_label: Option<String>,
    #[arg(long, hide = true, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility (no cgroups yet)
    #[arg(long, hide = true, value_name = "PATH")]
    pub cgroup: Option<String>,
    #[arg(long, hide = true)]
    pub ignore_paused: bool,
    /// Container id (OCI) or name (see `nook ps`)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// Command and arguments (unless --process)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsernsArg {
    /// You are root inside; your subordinate ids (/etc/subuid) are the other users, when you
    /// have them (else only your own id exists inside)
    Auto,
    /// Only your own uid/gid, as root inside, even when you have subordinate ids
    Single,
    /// You keep your own uid/gid inside (for bind-mounted work directories); root and the
    /// other users come from your subordinate ids
    KeepId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Share the host's network
    Host,
    /// A network namespace of its own with only the loopback interface
    None,
    /// A network namespace of its own joined by pasta, else slirp4netns (for -p)
    Private,
    /// Like private, with pasta only
    Pasta,
    /// Like private, with slirp4netns only
    Slirp4netns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RootEmulationArg {
    /// On when the container maps only your own id and runs as root
    Auto,
    /// On for this container whatever its id map
    Seccomp,
    /// Tier 2: like seccomp, and a supervisor in nook records chown's owners, so stat, commit
    /// and export show them (costs tens of microseconds per chown and per stat)
    Notify,
    /// Off: chown to other ids, set*id and device mknod fail as the kernel says
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Pick the best backend this machine supports
    Auto,
    /// Kernel overlayfs inside the user namespace (Linux 5.11+)
    Overlay,
    /// fuse-overlayfs, started inside the user namespace
    Fuse,
    /// A private copy of the image per container (reflinked where the filesystem can)
    Copy,
}

// `-h` is --hostname, as in podman; help is `--help` only.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// OCI: run this bundle (the positional is then the container id)
    #[arg(short = 'b', long, value_name = "DIR", help_heading = OCI_HEADING)]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub oci: OciCreateArgs,
    /// OCI: keep the container's state after it exits (with --bundle)
    #[arg(long, requires = "bundle", help_heading = OCI_HEADING)]
    pub keep: bool,
    /// Remove the container (and its writable layer) when it exits
    #[arg(long, conflicts_with = "bundle")]
    pub rm: bool,
    /// Name the container (default: a random adjective_noun, as podman)
    #[arg(long, conflicts_with = "bundle")]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass nook's own value)
    #[arg(
        short = 'e',
        long = "env",
        value_name = "KEY[=VALUE]",
        conflicts_with = "bundle"
    )]
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing)
    #[arg(short = 'w', long, value_name = "DIR", conflicts_with = "bundle")]
    pub workdir: Option<String>,
    /// User inside the container: UID[:GID] or names from the image's /etc/passwd
    #[arg(
        short = 'u',
        long,
        value_name = "USER[:GROUP]",
        conflicts_with = "bundle"
    )]
    pub user: Option<String>,
    /// Bind a host path into the container
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST:CONTAINER[:ro|:rw]",
        conflicts_with = "bundle"
    )]
    pub volumes: Vec<String>,
    /// Hostname inside the container (default: the first 12 characters of its id, as podman)
    #[arg(short = 'h', long, conflicts_with = "bundle")]
    pub hostname: Option<String>,
    /// Keep stdin open and pass it to the container
    #[arg(short = 'i', long, conflicts_with = "bundle")]
    pub interactive: bool,
    /// Give the container a terminal
    #[arg(short = 't', long, conflicts_with = "bundle")]
    pub tty: bool,
    /// Network mode (default: host; private when -p or -P is given)
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Publish a container port: [IP:]HOST:CTR[/tcp|udp], or CTR for a free host port;
    /// ranges as 8000-8002:80-82
    #[arg(short = 'p', long = "publish", conflicts_with = "bundle")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes (EXPOSE) on a free host port
    #[arg(short = 'P', long = "publish-all", conflicts_with = "bundle")]
    pub publish_all: bool,
    /// DNS server for the container's resolv.conf (repeatable)
    #[arg(long, conflicts_with = "bundle")]
    pub dns: Vec<String>,
    /// A search domain for the container's resolv.conf (repeatable; `.` for none)
    #[arg(long = "dns-search", value_name = "DOMAIN", conflicts_with = "bundle")]
    pub dns_search: Vec<String>,
    /// A resolver option for the container's resolv.conf, e.g. ndots:2 (repeatable)
    #[arg(long = "dns-option", value_name = "OPTION", conflicts_with = "bundle")]
    pub dns_option: Vec<String>,
    /// An /etc/hosts entry, NAME:IP (repeatable)
    #[arg(long = "add-host", conflicts_with = "bundle")]
    pub add_host: Vec<String>,
    /// Run a tiny init as pid 1 that forwards signals and reaps zombies
    #[arg(long, conflicts_with = "bundle")]
    pub init: bool,
    /// Run in the background; see `nook logs`, `nook stop`
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// How the writable layer is made [default: from nook.conf, else auto]
    #[arg(long, value_enum, conflicts_with = "bundle")]
    pub backend: Option<BackendArg>,
    /// How user ids inside map to ids outside
    #[arg(long, value_enum, default_value_t = UsernsArg::Auto)]
    pub userns: UsernsArg,
    /// Make chown, set*id and device mknod succeed without acting, for apt and dpkg in a
    /// container that maps one id [default: from nook.conf, else auto]
    #[arg(long, value_enum, conflicts_with = "bundle")]
    pub root_emulation: Option<RootEmulationArg>,
    /// At the end, print what root emulation faked (e.g. `3 chown, 2 set*id/setgroups calls
    /// emulated`). It costs: every faked call then goes through nook's supervisor
    #[arg(long, conflicts_with = "bundle")]
    pub root_emulation_report: bool,
    /// Do not print notes (such as the id-mapping fallback)
    #[arg(short, long)]
    pub quiet: bool,
    /// Run this program instead of the image's entrypoint (which also drops the image's
    /// default command); "" for none
    #[arg(long, value_name = "PROGRAM", conflicts_with = "bundle")]
    pub entrypoint: Option<String>,
    /// Read environment variables from a file: KEY=VALUE lines (or KEY, to pass nook's own
    /// value); `#` starts a comment line
    #[arg(long, value_name = "FILE", conflicts_with = "bundle")]
    pub env_file: Vec<PathBuf>,
    /// A mount, as podman writes it: type=bind,source=HOST,target=PATH[,readonly] or
    /// type=tmpfs,target=PATH[,tmpfs-size=SIZE][,tmpfs-mode=OCTAL]
    #[arg(long, value_name = "type=…,target=…", conflicts_with = "bundle")]
    pub mount: Vec<String>,
    /// Mount the container's root filesystem read-only (its /tmp, /var/tmp and /run, where the
    /// image has them, get a tmpfs, as in podman)
    #[arg(long, conflicts_with = "bundle")]
    pub read_only: bool,
    /// Mount a tmpfs: PATH[:OPTIONS], options as mount(8) takes them (size=64m,mode=1777)
    #[arg(long, value_name = "PATH[:OPTIONS]", conflicts_with = "bundle")]
    pub tmpfs: Vec<String>,
    /// Add a capability (NET_RAW, CAP_NET_RAW or ALL); it exists only inside the container's
    /// user namespace
    #[arg(long, value_name = "CAP", conflicts_with = "bundle")]
    pub cap_add: Vec<String>,
    /// Drop a capability (NET_RAW, CAP_NET_RAW or ALL)
    #[arg(long, value_name = "CAP", conflicts_with = "bundle")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges (always on), label=disable
    /// and apparmor=unconfined (no LSM is used)
    #[arg(long, value_name = "OPTION", conflicts_with = "bundle")]
    pub security_opt: Vec<String>,
    /// All capabilities inside the user namespace, no seccomp filter, /proc and /sys not
    /// masked; host devices are not added (use --device) and no privilege outside is gained
    #[arg(long, conflicts_with = "bundle")]
    pub privileged: bool,
    /// Make a host device available: HOST[:CONTAINER] (bind-mounted; you must be able to open
    /// it on the host)
    #[arg(long, value_name = "HOST[:CONTAINER]", conflicts_with = "bundle")]
    pub device: Vec<String>,
    /// A resource limit: NAME=SOFT[:HARD] (nofile, nproc, core, memlock, stack, …)
    #[arg(long, value_name = "NAME=SOFT[:HARD]", conflicts_with = "bundle")]
    pub ulimit: Vec<String>,
    /// Size of /dev/shm (bytes, or with k, m or g)
    #[arg(long, value_name = "SIZE", conflicts_with = "bundle")]
    pub shm_size: Option<String>,
    /// Write the container's id to this file (which must not exist)
    #[arg(long, value_name = "FILE", conflicts_with = "bundle")]
    pub cidfile: Option<PathBuf>,
    /// When to pull IMAGE from a registry: missing (when no image has its name; the default),
    /// always (ask the registry each time; an image that changed there is refused until
    /// `nook rmi` removes the old one), never
    #[arg(long, value_enum, value_name = "POLICY", conflicts_with = "bundle")]
    pub pull: Option<PullPolicy>,
    /// Pass the signals nook receives to the container (only true: nook always does)
    #[arg(long, value_name = "BOOL", conflicts_with = "bundle")]
    pub sig_proxy: Option<bool>,
    /// Not supported yet (nook keeps no labels): an error says so
    #[arg(short = 'l', long, value_name = "KEY=VALUE", conflicts_with = "bundle")]
    pub label: Vec<String>,
    /// Not supported yet (`nook stop` sends SIGTERM): an error says so
    #[arg(long, value_name = "SIGNAL", conflicts_with = "bundle")]
    pub stop_signal: Option<String>,
    /// Not supported yet (give `nook stop -t SECONDS`): an error says so
    #[arg(long, value_name = "SECONDS", conflicts_with = "bundle")]
    pub stop_timeout: Option<u64>,
    /// Image name (see `nook images`) or root filesystem directory (with --bundle: the
    /// container id)
    #[arg(value_name = "IMAGE|DIR|ID")]
    pub image: String,
    /// Command and arguments (default: the image's Cmd after its Entrypoint, else /bin/sh)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        conflicts_with = "bundle",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Accepted for podman's habit: stopped containers are always listed
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
    /// OCI: list the processes of this container instead
    #[arg(value_name = "ID")]
    pub container: Option<String>,
    /// OCI: ps(1) options, accepted for runc compatibility
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ps_args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Stop running containers first
    #[arg(short, long)]
    pub force: bool,
    /// Containers (names or ids)
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output until the container stops
    #[arg(short, long)]
    pub follow: bool,
    /// Print only the last N lines (then follow, with -f)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Not supported: nook's log keeps no times; an error says so
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// A detached container (name or id)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Args, Debug)]
pub struct PortArgs {
    /// The container, by name or id (one of `nook ps`)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// Only this container port: PORT[/tcp|udp]; prints its host address
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers (names or ids)
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// How user ids of the imported files map (they keep this mapping for good)
    #[arg(long, value_enum, default_value_t = UsernsArg::Auto)]
    pub userns: UsernsArg,
    /// Do not print notes
    #[arg(short, long)]
    pub quiet: bool,
    /// A directory, a tarball (plain, gzip, zstd or xz; `-` for stdin), an OCI image layout
    /// (directory or tar) or a `docker save` archive
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Name of the new image
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressFormat {
    /// Bars on a terminal, then one line
    Text,
    /// One JSON event per line on stdout
    Json,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The platform to pull from a multi-platform image: OS/ARCH[/VARIANT] (default: this
    /// machine's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print only the image's name
    #[arg(short, long)]
    pub quiet: bool,
    /// Verify the registry's TLS certificate (false also allows plain HTTP)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Store the image under this name (default: the repository's last part and the tag, as
    /// in debian:bookworm)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How user ids of the pulled files map (they keep this mapping for good)
    #[arg(long, value_enum, default_value_t = UsernsArg::Auto)]
    pub userns: UsernsArg,
    /// Progress output
    #[arg(long, value_enum, default_value_t = ProgressFormat::Text)]
    pub format: ProgressFormat,
    /// The image: NAME[:TAG], HOST[:PORT]/PATH[:TAG], …@sha256:DIGEST (short names are
    /// looked up as registries.conf says, docker.io by default)
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Verify the registry's TLS certificate (false also allows plain HTTP)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Print only the pushed manifest's digest
    #[arg(short, long)]
    pub quiet: bool,
    /// The image to push (see `nook images`)
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Where: HOST[:PORT]/PATH[:TAG] (default: the image's own name at the first
    /// unqualified-search registry)
    #[arg(value_name = "REFERENCE")]
    pub reference: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (visible to other users in the process list: prefer --password-stdin)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long, conflicts_with = "password")]
    pub password_stdin: bool,
    /// Verify the registry's TLS certificate (false also allows plain HTTP)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// The registry: HOST[:PORT]
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT]
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show the digest of each pulled image's manifest
    #[arg(long)]
    pub digests: bool,
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Also remove the containers that use the image (running ones are stopped first), as
    /// podman does
    #[arg(short, long)]
    pub force: bool,
    /// Image names
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name of the image (default: build-ID); `:latest` is dropped, as nook names carry no
    /// default tag
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    /// The Containerfile (default: CONTEXT/Containerfile, else CONTEXT/Dockerfile)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A build argument: KEY=VALUE (or KEY, to pass nook's own environment value)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// Build up to this stage (FROM … AS NAME)
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Run every step, using no cached one (the results replace the cached ones)
    #[arg(long)]
    pub no_cache: bool,
    /// Network of RUN steps (default: host, as `nook run`)
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Print only the image name
    #[arg(short, long)]
    pub quiet: bool,
    /// Accepted for podman's habit (nook's steps are always cached as flat trees)
    #[arg(long, hide = true)]
    pub layers: Option<Option<bool>>,
    /// The build context directory
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Change the image config, in Dockerfile syntax: CMD, ENTRYPOINT, ENV, WORKDIR, USER,
    /// LABEL, EXPOSE (e.g. -c 'CMD ["/bin/app"]' -c 'ENV MODE=prod' -c 'EXPOSE 80')
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Do not print notes
    #[arg(short, long)]
    pub quiet: bool,
    /// The container (name or id)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// Name of the new image
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The container (name or id)
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// The files as one tar archive
    Tar,
    /// An OCI image layout in a tar archive, with one layer (`podman load -i FILE`)
    Oci,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Where to write the archive (`-` for stdout)
    #[arg(short, long, value_name = "FILE")]
    pub output: String,
    /// What to write
    #[arg(long, value_enum, default_value_t = ExportFormatArg::Tar)]
    pub format: ExportFormatArg,
    /// An image name, else a container name or id
    #[arg(value_name = "IMAGE|CONTAINER")]
    pub target: String,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = InfoFormat::Text)]
    pub format: InfoFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InfoFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn walk(cmd: &clap::Command, path: &str, visit: &mut impl FnMut(&str, &clap::Command)) {
        visit(path, cmd);
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), visit);
        }
    }

    #[test]
    fn definitions_are_consistent_and_every_positional_is_described() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        cli.build();
        let mut undescribed = Vec::new();
        walk(&cli, "nook", &mut |path, cmd| {
            for arg in cmd.get_positionals() {
                if !arg.is_hide_set() && arg.get_help().is_none() {
                    undescribed.push(format!("{path} {}", arg.get_id()));
                }
            }
        });
        assert!(
            undescribed.is_empty(),
            "positionals without help: {undescribed:?}"
        );
    }

    #[test]
    fn run_help_shows_the_human_options_first_and_the_oci_ones_apart() {
        let help = Cli::command()
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        let oci = help.find(OCI_HEADING).expect("OCI heading");
        // Where the option's own entry starts ("  -b, --bundle <DIR>", "      --keep").
        let entry = |flag: &str| {
            let mut at = 0;
            for line in help.split_inclusive('\n') {
                let l = line.trim_start();
                if l.starts_with(flag) || (l.starts_with('-') && l.contains(&format!(", {flag}"))) {
                    return at;
                }
                at += line.len();
            }
            panic!("{flag} has no entry in:\n{help}");
        };
        for human in [
            "--rm",
            "--name",
            "--volume",
            "--hostname",
            "--userns",
            "--env-file",
        ] {
            assert!(entry(human) < oci, "{human} after the OCI heading");
        }
        for engine in [
            "--bundle",
            "--pid-file",
            "--console-socket",
            "--preserve-fds",
            "--keep",
        ] {
            assert!(entry(engine) > oci, "{engine} before the heading");
        }
    }

    #[test]
    fn top_level_help_lists_human_verbs_before_the_oci_ones() {
        let help = Cli::command().render_help().to_string();
        let at = |verb: &str| {
            help.find(&format!("\n  {verb} "))
                .unwrap_or_else(|| panic!("{verb} missing from:\n{help}"))
        };
        for human in ["run", "ps", "images", "tag", "top", "system", "completion"] {
            for oci in [
                "create", "start", "state", "delete", "list", "spec", "features",
            ] {
                assert!(at(human) < at(oci), "{human} listed after {oci}");
            }
        }
    }
}
