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
        Err(e) => {
            let code = if e.use_stderr() { NOOK_FAILED } else { 0 };
            let _ = e.print();
            std::process::exit(code);
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
