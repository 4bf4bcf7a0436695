//! `nook completion SHELL` and the hidden `nook generate-man DIR`: both made from the clap
//! definitions, so they never drift from the arguments nook really takes.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionArgs, GenerateManArgs, Shell};

pub fn completion(args: &CompletionArgs) -> Result<i32> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Made whole first: clap_complete panics on a failed write (`nook completion bash | head`),
    // where nook's own writes end quietly.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "nook", &mut script);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &script).context("writing the completion script")?;
    std::io::Write::flush(&mut out).context("writing the completion script")?;
    Ok(0)
}

pub fn generate_man(args: &GenerateManArgs) -> Result<i32> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut cli = Cli::command();
    cli.build();
    write_pages(&cli, "nook", &args.dir)?;
    Ok(0)
}

/// `PAGE.1` for `cmd`, then `PAGE-VERB.1` for each of its visible verbs, as git names its pages.
fn write_pages(cmd: &clap::Command, page: &str, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{page}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd.clone().name(page.to_string()))
        .render(&mut text)
        .with_context(|| format!("rendering the man page {page}"))?;
    crate::fsutil::write_atomic(&path, &text, false)?;
    println!("{}", path.display());
    // clap's own `help` verbs have no page: `nook help X` is `nook X --help`.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{page}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
