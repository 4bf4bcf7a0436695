//! `pull`, `login`, `logout`, `image prune`, and the pull `run` does for an image it lacks.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::mapping_for;
use crate::cli::{
    LoginArgs, LogoutArgs, ProgressFormat, PullArgs, PullPolicy, PushArgs, UsernsArg,
};
use crate::idmap::Caller;
use crate::registry::progress::{Mode, Progress};
use crate::registry::pull::{Platform, Request};
use crate::registry::reference::Written;
use crate::storage::blobs::BlobCache;
use crate::storage::container::storage_root;
use crate::storage::image::ImageStore;

fn request(reference: &str, args: Option<&PullArgs>, mode: Mode) -> Result<Request> {
    let config = crate::config::load()?;
    let platform = match args.and_then(|a| a.platform.as_deref()) {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    Ok(Request {
        reference: reference.to_string(),
        platform,
        tls_verify: args.map_or(true, |a| a.tls_verify),
        name: args.and_then(|a| a.name.clone()),
        parallel: config.pull_parallel,
        timeout: config.registry_timeout,
        progress: Progress::new(mode),
    })
}

fn pull_one(req: &Request, userns: UsernsArg, quiet: bool) -> Result<String> {
    let idmap = mapping_for(userns, &Caller::current(), quiet);
    let store = ImageStore::open()?;
    let cache = BlobCache::open(&storage_root()?)?;
    let pulled = crate::registry::pull::pull(&store, &cache, &idmap, req)?;
    if req.progress.mode() == Mode::Human {
        if pulled.up_to_date {
            eprintln!(
                "nook: {} is up to date ({}, image {})",
                pulled.reference, pulled.digest, pulled.name
            );
        } else {
            eprintln!(
                "nook: pulled {} ({}) as {}: {} layer(s), {} downloaded",
                pulled.reference,
                pulled.digest,
                pulled.name,
                pulled.layers,
                indicatif::HumanBytes(pulled.downloaded)
            );
        }
    }
    Ok(pulled.name)
}

pub fn pull(args: &PullArgs) -> Result<i32> {
    let mode = match (args.format, args.quiet) {
        (ProgressFormat::Json, _) => Mode::Json,
        (_, true) => Mode::Quiet,
        _ => Mode::Human,
    };
    let req = request(&args.reference, Some(args), mode)?;
    let name = pull_one(&req, args.userns, args.quiet)?;
    if mode != Mode::Json {
        println!("{name}");
    }
    Ok(0)
}

/// For `nook run IMAGE`: the stored image to run, pulling it as `policy` says. None when
/// `arg` is not a reference (a directory, say) and there is nothing to pull.
pub fn image_for_run(arg: &str, policy: PullPolicy) -> Result<Option<String>> {
    let Ok(written) = Written::parse(arg) else {
        return Ok(None);
    };
    let name = written.local_name();
    let store = ImageStore::open()?;
    let have = store.exists(&name);
    match policy {
        PullPolicy::Never if have => return Ok(Some(name)),
        PullPolicy::Never => return Ok(None),
        PullPolicy::Missing if have => return Ok(Some(name)),
        PullPolicy::Missing | PullPolicy::Always => {}
    }
    let req = request(arg, None, Mode::Human)?;
    pull_one(&req, UsernsArg::Auto, false)
        .with_context(|| format!("{arg}: no such image here, and pulling it failed"))
        .map(Some)
}

pub fn push(args: &PushArgs) -> Result<i32> {
    let store = ImageStore::open()?;
    let image = store.get(&args.image)?;
    let target = args.reference.clone().unwrap_or_else(|| args.image.clone());
    let config = crate::config::load()?;
    let pushed = crate::registry::push::push(
        &store,
        &storage_root()?,
        &image,
        &target,
        args.tls_verify,
        config.registry_timeout,
    )
    .with_context(|| format!("pushing {} to {target}", args.image))?;
    if !args.quiet {
        for (digest, how) in &pushed.blobs {
            eprintln!("nook: blob {digest}: {how}");
        }
        eprintln!(
            "nook: pushed {} as {} ({})",
            args.image, pushed.reference, pushed.digest
        );
    }
    println!("{}", pushed.digest);
    Ok(0)
}

fn read_password(args: &LoginArgs) -> Result<String> {
    if let Some(p) = &args.password {
        return Ok(p.clone());
    }
    if !args.password_stdin {
        bail!("nook login needs a password: give --password-stdin (or -p)");
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn registry_host(arg: &str) -> Result<String> {
    let host = arg
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        bail!("{arg:?} is not a registry: give HOST[:PORT], as in quay.io or localhost:5000");
    }
    Ok(host.to_string())
}

pub fn login(args: &LoginArgs) -> Result<i32> {
    let host = registry_host(&args.registry)?;
    let Some(username) = args.username.clone().filter(|u| !u.is_empty()) else {
        bail!("nook login {host}: give the user name with -u");
    };
    let password = read_password(args)?;
    if password.is_empty() {
        bail!("nook login {host}: the password is empty");
    }
    let conf = crate::registry::conf::Conf::load()?;
    let insecure = !args.tls_verify || conf.insecure_host(&host);
    let config = crate::config::load()?;
    let creds = crate::registry::auth::Credentials {
        username: username.clone(),
        secret: password.clone(),
        from: "the command line".into(),
    };
    let api_host = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host.as_str()
    };
    crate::registry::client::Session::open(
        api_host,
        insecure,
        Some(creds),
        config.registry_timeout,
    )
    .and_then(|s| s.check_login())
    .with_context(|| format!("logging in to {host} as {username}"))?;
    let file = crate::registry::auth::save(&host, &username, &password)?;
    eprintln!("nook: credentials for {host} saved in {}", file.display());
    println!("Login Succeeded!");
    Ok(0)
}

pub fn logout(args: &LogoutArgs) -> Result<i32> {
    let host = registry_host(&args.registry)?;
    if crate::registry::auth::remove(&host)? {
        println!("Removed login credentials for {host}");
        Ok(0)
    } else {
        bail!(
            "not logged in to {host} (no entry in {})",
            crate::registry::auth::login_file()?.display()
        )
    }
}

pub fn prune_blobs() -> Result<i32> {
    let cache = BlobCache::open(&storage_root()?)?;
    let freed = cache.prune()?;
    println!("freed {}", indicatif::HumanBytes(freed));
    Ok(0)
}
