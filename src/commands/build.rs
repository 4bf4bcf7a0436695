//! `nook build`: the CLI's options turned into a build (see `crate::build`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::build::executor::{self, BuildOptions, StepFailed};
use crate::cli::{BuildArgs, NetworkArg, UsernsArg};
use crate::idmap::Caller;

pub fn build(args: &BuildArgs) -> Result<i32> {
    let mut build_args = BTreeMap::new();
    for arg in &args.build_arg {
        match arg.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => {
                let value = std::env::var(arg).with_context(|| {
                    format!("--build-arg {arg}: give KEY=VALUE, or set {arg} in the environment")
                })?;
                build_args.insert(arg.clone(), value)
            }
        };
    }
    let network = match args.network {
        None | Some(NetworkArg::Host) => "host",
        Some(NetworkArg::None) => "none",
        Some(other) => anyhow::bail!(
            "--network {other:?}: RUN steps take host or none (a private network for builds is \
             not supported yet)"
        ),
    };
    let idmap = super::mapping_for(UsernsArg::Auto, &Caller::current(), args.quiet);
    let opts = BuildOptions {
        context: args.context.clone(),
        containerfile: args.file.clone(),
        tag: args.tag.clone(),
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        network: network.to_string(),
        quiet: args.quiet,
        idmap,
    };
    match executor::build(&opts) {
        Ok(name) => {
            println!("{name}");
            Ok(0)
        }
        Err(e) => match e.downcast_ref::<StepFailed>() {
            Some(failed) => {
                eprintln!("nook: error: {e:#}");
                Ok(failed.status)
            }
            None => Err(e),
        },
    }
}
