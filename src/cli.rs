//! Command-line arguments. No logic beyond parsing.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "nook",
    version,
    about = "Rootless containers: one writable layer over a plain-directory image, no daemon",
    after_help = "Storage: $NOOK_STORAGE, else $XDG_DATA_HOME/nook, else ~/.local/share/nook."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a new container made from a root filesystem directory
    Run(RunArgs),
    /// List containers
    Ps(PsArgs),
    /// Remove containers and their writable layers
    Rm(RmArgs),
    /// Print what a detached container wrote to stdout and stderr
    Logs(LogsArgs),
    /// Stop a running container: SIGTERM, then SIGKILL after a grace period
    Stop(StopArgs),
    /// Import a directory or tar archive as an image
    Import(ImportArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Check what this machine offers nook (namespaces, ids, fuse, storage, backend choice)
    Info(InfoArgs),
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

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container (and its writable layer) when it exits
    #[arg(long)]
    pub rm: bool,
    /// Name the container (default: the image directory's name and a few characters of the id)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass nook's own value)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing)
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User inside the container: UID[:GID] or names from the image's /etc/passwd
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Bind a host path into the container
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro|:rw]")]
    pub volumes: Vec<String>,
    /// Hostname inside the container (default: the container's name)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Keep stdin open and pass it to the container
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Network mode
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    pub network: NetworkArg,
    /// Run a tiny init as pid 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Run in the background; see `nook logs`, `nook stop`
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// How the writable layer is made [default: from nook.conf, else auto]
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// How user ids inside map to ids outside
    #[arg(long, value_enum, default_value_t = UsernsArg::Auto)]
    pub userns: UsernsArg,
    /// Do not print notes (such as the id-mapping fallback)
    #[arg(short, long)]
    pub quiet: bool,
    /// Image name (see `nook images`) or root filesystem directory
    #[arg(value_name = "IMAGE|DIR")]
    pub image: String,
    /// Command and arguments (default: /bin/sh)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
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
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
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
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
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
    /// A directory, or a tar archive (`-` for stdin)
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Name of the new image
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove even if containers use the image
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
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
