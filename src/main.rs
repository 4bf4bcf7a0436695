use clap::{CommandFactory, FromArgMatches};

use nook::cli::{Cli, Command, ContainerCommand, ImageCommand, InspectType, SystemCommand};
use nook::commands::{self, cgroups, log, oci};
use nook::launch::ChildFailed;

/// Status for nook's own failures when the verb has nothing more specific (as docker and podman
/// do for `run`, so that it never collides with the command's own statuses).
const NOOK_FAILED: i32 = 125;

/// `nook version`, worded as `--version`.
const VERSION_TEXT: &str = concat!("version ", env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0");

/// What a shell shows for a program that SIGPIPE ended: `nook export -o - | head` ends as
/// `tar cf - | head` would, without a word.
const BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

fn main() {
    // println! panics when the reader of stdout has gone (`nook ps | head`): that is no failure.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE);
        }
        default_hook(info);
    }));
    // Cli::try_parse, but the parser's whole command tree (every verb's arguments, built
    // at each start) is not freed: the process exits soon, and freeing it was a tenth of the
    // instructions a `run` executes in user space.
    let mut command = Cli::command();
    let parsed = match command.try_get_matches_from_mut(std::env::args_os()) {
        Ok(mut matches) => {
            let cli = Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command));
            std::mem::forget(matches);
            cli
        }
        Err(e) => Err(e),
    };
    std::mem::forget(command);
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("nook: {}", one_line(&e.to_string()));
            std::process::exit(NOOK_FAILED);
        }
    };
    let g = &cli.global;
    log::init(g.log.clone(), g.log_format, g.debug);
    let result = match &cli.command {
        Command::Run(args) if args.bundle.is_some() => oci::run(g, args),
        Command::Run(args) => commands::run(args),
        Command::Ps(args) => match &args.container {
            Some(id) => oci::ps(g, id, args.format),
            None => commands::ps(args),
        },
        Command::Rm(args) => commands::rm(args),
        Command::Logs(args) => commands::logs(args),
        Command::Stop(args) => commands::stop(args),
        Command::Port(args) => commands::port(args),
        Command::Import(args) => commands::import(args),
        Command::Pull(args) => commands::pull(args),
        Command::Push(args) => commands::push(args),
        Command::Login(args) => commands::login(args),
        Command::Logout(args) => commands::logout(args),
        Command::Images(args) => commands::images(args),
        Command::Rmi(args) => commands::rmi(args),
        Command::Build(args) => commands::build(args),
        Command::Commit(args) => commands::commit(args),
        Command::Diff(args) => commands::diff(args),
        Command::Export(args) => commands::export(args),
        Command::Exec(args) => oci::exec(g, args),
        Command::Create(args) => oci::create(g, args),
        Command::Start(args) => oci::start(g, args),
        Command::State(args) => oci::state(g, args),
        Command::Kill(args) => oci::kill_container(g, args),
        Command::Delete(args) => oci::delete(g, args),
        Command::List(args) => oci::list(g, args),
        Command::Spec(args) => oci::spec(args),
        Command::Features => oci::features(),
        Command::Pause(args) => cgroups::pause(g, args, true),
        Command::Resume(args) => cgroups::pause(g, args, false),
        Command::Update(args) => cgroups::update(g, args),
        Command::Info(args) => commands::info(args),
        Command::Version => {
            println!("nook {VERSION_TEXT}");
            Ok(0)
        }
        Command::Inspect(args) => commands::inspect(args, args.kind),
        Command::Container(verb) => match verb {
            ContainerCommand::Ls(args) => commands::ps(args),
            ContainerCommand::Rm(args) => commands::rm(args),
            ContainerCommand::Inspect(args) => {
                commands::inspect(args, Some(InspectType::Container))
            }
        },
        Command::Image(verb) => match verb {
            ImageCommand::Ls(args) => commands::images(args),
            ImageCommand::Rm(args) => commands::rmi(args),
            ImageCommand::Import(args) => commands::import(args),
            ImageCommand::Pull(args) => commands::pull(args),
            ImageCommand::Prune => commands::prune_blobs(),
            ImageCommand::Inspect(args) => commands::inspect(args, Some(InspectType::Image)),
        },
        Command::Tag(args) => commands::tag(args),
        Command::Top(args) => commands::top(args),
        Command::Cp(args) => commands::cp(args),
        Command::Restart(args) => commands::restart(args),
        Command::System(verb) => match verb {
            SystemCommand::Df(args) => commands::df(args),
            SystemCommand::Prune(args) => commands::prune(args),
        },
        Command::Completion(args) => commands::completion(args),
        Command::GenerateMan(args) => commands::generate_man(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) if nook::fsutil::is_broken_pipe(&e) => BROKEN_PIPE,
        Err(e) => {
            log::error(&format!("{e:#}"));
            match e.downcast_ref::<ChildFailed>() {
                Some(failed) => failed.code,
                None if matches!(&cli.command, Command::Run(a) if a.bundle.is_none()) => {
                    NOOK_FAILED
                }
                None => 1,
            }
        }
    };
    std::process::exit(code);
}

/// A usage error on one line, like every other nook error: clap's message, the possible values
/// if it listed them, and where to look for more.
fn one_line(message: &str) -> String {
    let mut parts: Vec<&str> = message
        .lines()
        .map(|l| l.trim())
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    if let Some(first) = parts.first_mut() {
        *first = first.strip_prefix("error: ").unwrap_or(first);
    }
    format!("{} (see --help)", parts.join(" "))
}
