use clap::Parser;

use nook::cli::{Cli, Command};
use nook::commands;
use nook::launch::ChildFailed;

/// Status for nook's own failures when the verb has nothing more specific (as docker and podman
/// do for `run`, so that it never collides with the command's own statuses).
const NOOK_FAILED: i32 = 125;

fn main() {
    let cli = match Cli::try_parse() {
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
    let result = match &cli.command {
        Command::Run(args) => commands::run(args),
        Command::Ps(args) => commands::ps(args),
        Command::Rm(args) => commands::rm(args),
        Command::Logs(args) => commands::logs(args),
        Command::Stop(args) => commands::stop(args),
        Command::Import(args) => commands::import(args),
        Command::Images(args) => commands::images(args),
        Command::Rmi(args) => commands::rmi(args),
        Command::Info(args) => commands::info(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nook: {e:#}");
            match e.downcast_ref::<ChildFailed>() {
                Some(failed) => failed.code,
                None if matches!(cli.command, Command::Run(_)) => NOOK_FAILED,
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
