//! Running a planned build: each stage from its base, config instructions applied in memory,
//! tree-making steps (RUN, COPY, WORKDIR of a missing directory) looked up in the step cache
//! under `<storage>/build-cache/<key>/` and made when missing — RUN in a nook container over the
//! previous tree, then committed; COPY into a hard-linked copy of it — and the target stage's
//! tree linked into the image store as the new image.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::containerfile::{self, Args, Instruction};
use super::context::BuildContext;
use super::expand::{expand_pairs, expand_word, expand_words};
use super::key::{step_key, StepInputs};
use super::stages::{flag, plan, Base};
use crate::fsutil::create_private_dir;
use crate::idmap::IdMapping;
use crate::launch::run_in_userns;
use crate::storage::archive::Found;
use crate::storage::container::{storage_root, Store};
use crate::storage::image::{Built, ContainerLayer, ImageConfig, ImageStore};
use crate::storage::layer::Summary;
use crate::storage::tree::{Copier, Share};
use crate::storage::upper::{Layer, LayerKind};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct BuildOptions {
    pub context: PathBuf,
    pub containerfile: Option<PathBuf>,
    pub tag: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub network: String,
    pub quiet: bool,
    /// The id mapping RUN containers get (and new trees are written with).
    pub idmap: IdMapping,
}

/// Why a build stopped at a RUN whose command failed: the exit status to pass on.
#[derive(Debug)]
pub struct StepFailed {
    pub status: i32,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.status)
    }
}

impl std::error::Error for StepFailed {}

/// A stage's state as its steps go.
#[derive(Clone)]
struct State {
    /// The root filesystem so far (None: scratch, nothing made yet).
    tree: Option<PathBuf>,
    idmap: IdMapping,
    key: String,
    config: ImageConfig,
    /// ARG values in scope (a declared ARG without a value is absent).
    args: BTreeMap<String, String>,
    shell: Vec<String>,
}

impl State {
    fn env(&self) -> BTreeMap<String, String> {
        self.config
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What expansion sees: ARGs, overridden by ENV (as Docker documents).
    fn scope(&self) -> BTreeMap<String, String> {
        let mut scope = self.args.clone();
        scope.extend(self.env());
        scope
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(format!("{key}={value}"));
    }

    fn workdir(&self) -> String {
        self.config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

pub fn build(opts: &BuildOptions) -> Result<String> {
    let file_path = match &opts.containerfile {
        Some(f) => f.clone(),
        None => ["Containerfile", "Dockerfile"]
            .iter()
            .map(|n| opts.context.join(n))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no Containerfile or Dockerfile in {}; give one with -f FILE",
                    opts.context.display()
                )
            })?,
    };
    let text = fs::read_to_string(&file_path)
        .with_context(|| format!("reading {}", file_path.display()))?;
    let file = containerfile::parse(&text)
        .map_err(|e| e.context(format!("in {}", file_path.display())))?;
    let plan = plan(&file, &opts.build_args, opts.target.as_deref())
        .map_err(|e| e.context(format!("in {}", file_path.display())))?;
    let context = BuildContext::open(&opts.context, &file_path)?;
    let storage = storage_root()?;
    let cache_root = storage.join("build-cache");
    create_private_dir(&cache_root)
        .with_context(|| format!("creating the step cache {}", cache_root.display()))?;
    let cache = ImageStore::at(cache_root);
    let images = ImageStore::open()?;
    remove_leftover_containers();
    let total: usize = plan.stages[..=plan.target]
        .iter()
        .map(|s| 1 + s.instructions.len())
        .sum();
    let mut step_no = 0;
    let mut done: Vec<State> = Vec::new();
    let stage_names: Vec<Option<String>> = plan.stages.iter().map(|s| s.name.clone()).collect();
    for stage in &plan.stages[..=plan.target] {
        step_no += 1;
        let from_text = &file
            .instructions
            .iter()
            .find(|i| i.line == stage.from_line)
            .map(|i| i.text.clone())
            .unwrap_or_default();
        say(opts, &format!("STEP {step_no}/{total}: {from_text}"));
        let mut state = match &stage.base {
            Base::Scratch => State {
                tree: None,
                idmap: opts.idmap.clone(),
                key: "scratch".into(),
                config: ImageConfig::default(),
                args: BTreeMap::new(),
                shell: vec!["/bin/sh".into(), "-c".into()],
            },
            Base::Stage(i) => {
                let mut s = done[*i].clone();
                s.args.clear();
                s
            }
            Base::Image(name) => {
                let image = images.get(name).with_context(|| {
                    format!(
                        "line {}: FROM {name}: the image is not in the store; get it with \
                         `nook pull {name}` or `nook import`",
                        stage.from_line
                    )
                })?;
                let meta = fs::read(image.dir.join("image.json"))
                    .with_context(|| format!("reading {}", image.dir.display()))?;
                State {
                    tree: Some(image.rootfs()),
                    idmap: image.meta.idmap.clone(),
                    key: format!("image:{:x}", Sha256::digest(&meta)),
                    config: image.meta.config.clone(),
                    args: BTreeMap::new(),
                    shell: vec!["/bin/sh".into(), "-c".into()],
                }
            }
        };
        for ins in &stage.instructions {
            step_no += 1;
            say(opts, &format!("STEP {step_no}/{total}: {}", ins.text));
            let started = Instant::now();
            let cached = step(
                opts,
                &file,
                &plan.global_args,
                &context,
                &cache,
                &done,
                &stage_names,
                &mut state,
                ins,
                step_no,
            )
            .map_err(|e| {
                if e.downcast_ref::<StepFailed>().is_some() {
                    e.context(format!(
                        "step {step_no}/{total} at {} line {}: {}",
                        file_path.display(),
                        ins.line,
                        ins.text
                    ))
                } else {
                    e.context(format!(
                        "step {step_no}/{total} at {} line {}",
                        file_path.display(),
                        ins.line
                    ))
                }
            })?;
            match cached {
                Some(true) => say(opts, "--> CACHED"),
                Some(false) => say(
                    opts,
                    &format!("--> {:.2}s", started.elapsed().as_secs_f64()),
                ),
                None => {}
            }
        }
        done.push(state);
    }
    let last = &done[plan.target];
    let name = match &opts.tag {
        Some(t) => t.strip_suffix(":latest").unwrap_or(t).to_string(),
        None => format!("build-{}", &last.key[last.key.len().saturating_sub(12)..]),
    };
    let source = format!("build of {}", file_path.display());
    write_image(&images, &name, last, &source)?;
    Ok(name)
}

fn say(opts: &BuildOptions, line: &str) {
    if !opts.quiet {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

/// One instruction. Returns Some(cached) for a tree-making step, None for a config one.
#[allow(clippy::too_many_arguments)]
fn step(
    opts: &BuildOptions,
    file: &containerfile::Containerfile,
    global_args: &BTreeMap<String, Option<String>>,
    context: &BuildContext,
    cache: &ImageStore,
    done: &[State],
    stage_names: &[Option<String>],
    state: &mut State,
    ins: &Instruction,
    step_no: usize,
) -> Result<Option<bool>> {
    let escape = file.escape;
    let text = match &ins.args {
        Args::Text(t) => t.clone(),
        Args::Json(_) => String::new(),
    };
    let scope = state.scope();
    match ins.keyword.as_str() {
        "ENV" => {
            let pairs = expand_pairs(&text, &scope, escape)?.value;
            if pairs.is_empty() {
                bail!("ENV needs KEY=VALUE");
            }
            for (k, v) in pairs {
                state.set_env(&k, &v);
            }
            Ok(None)
        }
        "ARG" => {
            let raw: Vec<&str> = text.split_whitespace().collect();
            let pairs = expand_pairs(&text, &scope, escape)?.value;
            for (k, (name, value)) in pairs.into_iter().enumerate() {
                let has_default = raw.get(k).is_some_and(|w| w.contains('='));
                let value = opts
                    .build_args
                    .get(&name)
                    .cloned()
                    .or_else(|| global_args.get(&name).cloned().flatten())
                    .or(has_default.then_some(value));
                if let Some(v) = value {
                    state.args.insert(name, v);
                }
            }
            Ok(None)
        }
        "LABEL" => {
            let pairs = expand_pairs(&text, &scope, escape)?.value;
            let labels = state.config.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(pairs);
            Ok(None)
        }
        "USER" => {
            state.config.user = Some(expand_word(&text, &scope, escape)?.value);
            Ok(None)
        }
        "EXPOSE" => {
            let ports = expand_words(&text, &scope, escape)?.value;
            let exposed = state.config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in ports {
                let p = if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                };
                exposed.insert(p, serde_json::json!({}));
            }
            Ok(None)
        }
        "CMD" => {
            state.config.cmd = Some(command(ins, state));
            Ok(None)
        }
        "ENTRYPOINT" => {
            state.config.entrypoint = Some(command(ins, state));
            // As Docker: a new entrypoint drops the CMD inherited from the base.
            state.config.cmd = None;
            Ok(None)
        }
        "SHELL" => {
            let Args::Json(list) = &ins.args else {
                bail!("SHELL takes a JSON list, e.g. SHELL [\"/bin/bash\", \"-c\"]");
            };
            if list.is_empty() {
                bail!("SHELL needs at least the shell's path");
            }
            state.shell = list.clone();
            Ok(None)
        }
        "VOLUME" | "STOPSIGNAL" | "ONBUILD" => bail!(
            "{} is not supported by nook build yet (nook's image config has no field for it)",
            ins.keyword
        ),
        "WORKDIR" => {
            let dir = expand_word(&text, &scope, escape)?.value;
            let dir = if dir.starts_with('/') {
                dir
            } else {
                format!("{}/{dir}", state.workdir().trim_end_matches('/'))
            };
            let dir = format!("/{}", super::ignore::clean(&dir).trim_start_matches('.'));
            state.config.working_dir = Some(dir.clone());
            let exists = state
                .tree
                .as_ref()
                .is_some_and(|t| resolve_in_tree(t, &dir).is_ok_and(|p| p.is_dir()));
            if exists {
                return Ok(None);
            }
            let key = step_key(&StepInputs {
                parent: &state.key,
                instruction: &format!("WORKDIR {dir}"),
                heredocs: &[],
                scope: &BTreeMap::new(),
                used: &BTreeSet::new(),
                whole_scope: false,
                settings: &[],
                content: None,
            });
            tree_step(opts, cache, state, key, |root| {
                make_dirs(root, &dir)?;
                Ok(())
            })
            .map(Some)
        }
        "RUN" => run_step(opts, cache, state, ins, step_no).map(Some),
        "COPY" | "ADD" => {
            copy_step(opts, context, cache, done, stage_names, state, ins, escape).map(Some)
        }
        other => bail!("{other} is not supported by nook build"),
    }
}

/// CMD/ENTRYPOINT: the JSON form as given, the shell form through the stage's SHELL.
fn command(ins: &Instruction, state: &State) -> Vec<String> {
    match &ins.args {
        Args::Json(list) => list.clone(),
        Args::Text(t) => {
            let mut argv = state.shell.clone();
            argv.push(t.clone());
            argv
        }
    }
}

/// Looks the step up in the cache, else makes its tree with `make` (run inside the user
/// namespace over a hard-linked copy of the current tree) and stores it. Returns whether it
/// was cached.
fn tree_step(
    opts: &BuildOptions,
    cache: &ImageStore,
    state: &mut State,
    key: String,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    let name = &key[..64.min(key.len())];
    if !opts.no_cache && cache.exists(name) {
        state.tree = Some(cache.root().join(name).join("rootfs"));
        state.key = key;
        return Ok(true);
    }
    if opts.no_cache && cache.exists(name) {
        let old = cache.get(name)?;
        cache.remove_unless_used(&old, || Ok(Vec::new()))?;
    }
    let parent = state.tree.clone();
    let idmap = state.idmap.clone();
    cache.build(name, &idmap, "build step", |tmp| {
        let rootfs = tmp.join("rootfs");
        run_in_userns(&idmap, move || {
            linked_copy(parent.as_deref(), &rootfs)?;
            make(&rootfs)
        })?;
        Ok(Built {
            found: Found {
                kind: "build step".into(),
                ..Found::default()
            },
            summary: Summary::default(),
        })
    })?;
    state.tree = Some(cache.root().join(name).join("rootfs"));
    state.key = key;
    Ok(false)
}

fn run_step(
    opts: &BuildOptions,
    cache: &ImageStore,
    state: &mut State,
    ins: &Instruction,
    step_no: usize,
) -> Result<bool> {
    let argv = match &ins.args {
        Args::Json(list) => list.clone(),
        Args::Text(text) => {
            let mut script = text.clone();
            let only_heredoc = ins.heredocs.len() == 1
                && text.trim().starts_with("<<")
                && text.split_whitespace().count() == 1;
            if only_heredoc {
                // `RUN <<EOF` alone: the document is the script, as BuildKit runs it.
                script = ins.heredocs[0].body();
            } else {
                for doc in &ins.heredocs {
                    script.push('\n');
                    script.push_str(&doc.raw);
                    script.push_str(&doc.delimiter);
                }
            }
            let mut argv = state.shell.clone();
            argv.push(script);
            argv
        }
    };
    let network = match flag(ins, "network") {
        None | Some("default") => opts.network.clone(),
        Some(n @ ("host" | "none")) => n.to_string(),
        Some(other) => bail!("RUN --network={other}: give host, none or default"),
    };
    let mut env = state.env();
    env.entry("PATH".into()).or_insert(DEFAULT_PATH.into());
    let mut environment = state.args.clone();
    environment.extend(env);
    let heredocs: Vec<String> = ins.heredocs.iter().map(|h| h.raw.clone()).collect();
    let user = state.config.user.clone().unwrap_or_default();
    let workdir = state.workdir();
    let key = step_key(&StepInputs {
        parent: &state.key,
        instruction: &ins.text,
        heredocs: &heredocs,
        scope: &environment,
        used: &BTreeSet::new(),
        whole_scope: true,
        settings: &[
            ("user", user.clone()),
            ("workdir", workdir.clone()),
            ("shell", state.shell.join("\0")),
            ("network", network.clone()),
        ],
        content: None,
    });
    let name = &key[..64];
    if !opts.no_cache && cache.exists(name) {
        state.tree = Some(cache.root().join(name).join("rootfs"));
        state.key = key;
        return Ok(true);
    }
    let Some(tree) = state.tree.clone() else {
        bail!("RUN needs a root filesystem: this stage starts from scratch and has no files yet");
    };
    let container = format!("nook-build-{}-{step_no}", std::process::id());
    let exe = std::env::current_exe().context("finding nook's own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "-q", "--name", &container, "--network", &network]);
    cmd.args(["-w", &workdir]);
    if !user.is_empty() {
        cmd.args(["-u", &user]);
    }
    for (k, v) in &environment {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(&tree).arg("--").args(&argv);
    cmd.stdin(std::process::Stdio::null());
    // stdout carries only the image name (for scripts, as `podman build -q` does); what the
    // command prints goes to stderr beside the step lines, or nowhere with -q.
    if opts.quiet {
        cmd.stdout(std::process::Stdio::null());
    } else {
        cmd.stdout(std::io::stderr());
    }
    let status = cmd.status().context("starting the RUN container")?;
    let store = Store::open()?;
    let result = (|| -> Result<()> {
        if !status.success() {
            let code = status.code().unwrap_or(1);
            return Err(StepFailed { status: code }.into());
        }
        let c = store.get(&container)?;
        let idmap = c
            .meta
            .idmap
            .clone()
            .context("the RUN container recorded no id mapping")?;
        let kind = LayerKind::for_backend(&c.meta.backend);
        let layer = ContainerLayer {
            layer: Layer {
                kind,
                top: match kind {
                    LayerKind::Copy => c.dir.join("rootfs"),
                    _ => c.upper(),
                },
                base: c.meta.image.clone(),
            },
            base_is_image: idmap == state.idmap,
            idmap: idmap.clone(),
        };
        if opts.no_cache && cache.exists(name) {
            let old = cache.get(name)?;
            cache.remove_unless_used(&old, || Ok(Vec::new()))?;
        }
        cache.commit(name, &layer, ImageConfig::default(), "build step")?;
        state.idmap = idmap;
        Ok(())
    })();
    if let Ok(c) = store.get(&container) {
        let _ = store.remove(&c);
    }
    result?;
    state.tree = Some(cache.root().join(name).join("rootfs"));
    state.key = key;
    Ok(false)
}

#[allow(clippy::too_many_arguments)]
fn copy_step(
    opts: &BuildOptions,
    context: &BuildContext,
    cache: &ImageStore,
    done: &[State],
    stage_names: &[Option<String>],
    state: &mut State,
    ins: &Instruction,
    escape: char,
) -> Result<bool> {
    let scope = state.scope();
    let mut used = BTreeSet::new();
    let mut words = match &ins.args {
        Args::Json(list) => list.clone(),
        Args::Text(t) => {
            let e = expand_words(t, &scope, escape)?;
            used.extend(e.used);
            e.value
        }
    };
    // Here-document sources are named by their delimiter in the words.
    let docs: BTreeMap<String, String> = ins
        .heredocs
        .iter()
        .map(|h| (format!("<<{}", h.delimiter), h.body()))
        .collect();
    if words.len() < 2 {
        bail!("{} needs a source and a destination", ins.keyword);
    }
    let dest = words.pop().unwrap_or_default();
    for w in &words {
        if w.starts_with("http://") || w.starts_with("https://") || w.starts_with("git@") {
            bail!(
                "{} {w}: URLs are not supported by nook build; download the file into the \
                 build context first",
                ins.keyword
            );
        }
    }
    let chown = match flag(ins, "chown") {
        Some(c) => Some(expand_word(c, &scope, escape)?.value),
        None => None,
    };
    let chmod = match flag(ins, "chmod") {
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .with_context(|| format!("--chmod={m}: give an octal mode such as 0755"))?,
        ),
        None => None,
    };
    let what = format!("{} at line {}", ins.keyword, ins.line);
    // (source path, its name relative to the context or the stage's root)
    let mut sources: Vec<(PathBuf, String)> = Vec::new();
    let mut inline: Vec<(String, String)> = Vec::new();
    let content = match flag(ins, "from") {
        Some(from) => {
            let lowered = from.to_ascii_lowercase();
            let by_index = lowered.parse::<usize>().ok().and_then(|i| done.get(i));
            let by_name = stage_names
                .iter()
                .position(|n| n.as_deref() == Some(lowered.as_str()))
                .and_then(|i| done.get(i));
            let Some(stage) = by_name.or(by_index) else {
                bail!(
                    "--from={from}: no earlier stage has that name or index (images as \
                     --from are not supported yet)"
                );
            };
            let Some(root) = stage.tree.clone() else {
                bail!("--from={from}: that stage has no files");
            };
            for w in &words {
                let p = resolve_in_tree(&root, w)?;
                sources.push((p, w.clone()));
            }
            stage.key.clone()
        }
        None => {
            let mut found = Vec::new();
            for w in &words {
                if let Some(body) = docs.get(w) {
                    inline.push((w.trim_start_matches("<<").to_string(), body.clone()));
                    continue;
                }
                found.extend(context.resolve(w, &what)?);
            }
            for s in &found {
                sources.push((s.path.clone(), s.rel.clone()));
            }
            let mut h = context.content_hash(&found)?;
            for (n, body) in &inline {
                h.push_str(&format!("{:x}", Sha256::digest(format!("{n}\0{body}"))));
            }
            h
        }
    };
    let workdir = state.workdir();
    let key = step_key(&StepInputs {
        parent: &state.key,
        instruction: &format!(
            "{} {:?} {:?} {:?} {:?} {dest}",
            ins.keyword, chown, chmod, words, workdir
        ),
        heredocs: &[],
        scope: &scope,
        used: &used,
        whole_scope: false,
        settings: &[],
        content: Some(&content),
    });
    let many = sources.len() + inline.len() > 1;
    let dest_abs = if dest.starts_with('/') {
        dest.clone()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let into_dir = dest.ends_with('/') || many;
    let ignore = context.ignore.clone();
    let context_root = context.root().to_path_buf();
    let is_add = ins.keyword == "ADD";
    tree_step(opts, cache, state, key, move |root| {
        let owner = match &chown {
            Some(spec) => Some(resolve_owner(root, spec)?),
            None => Some((0, 0)),
        };
        let dest_dir_existing = resolve_in_tree(root, &dest_abs).is_ok_and(|p| p.is_dir());
        for (src, rel) in &sources {
            let meta = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
            let in_context = src.starts_with(&context_root);
            if is_add && meta.is_file() && looks_like_tar(src) {
                let target = make_dirs(root, &dest_abs)?;
                extract_tar(src, &target)?;
                continue;
            }
            let target = if meta.is_dir() || into_dir || dest_dir_existing {
                let dir = make_dirs(root, &dest_abs)?;
                if meta.is_dir() {
                    dir
                } else {
                    dir.join(Path::new(rel).file_name().unwrap_or_default())
                }
            } else {
                let parent = Path::new(&dest_abs)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into());
                make_dirs(root, &parent)?.join(Path::new(&dest_abs).file_name().unwrap_or_default())
            };
            let mut copier = Copier::default();
            copy_source(
                &mut copier,
                src,
                &target,
                rel,
                in_context.then_some(&ignore),
                meta.is_dir(),
                owner,
                chmod,
            )?;
            copier.finish()?;
        }
        for (name, body) in &inline {
            let target = if into_dir || dest_dir_existing {
                make_dirs(root, &dest_abs)?.join(name)
            } else {
                let parent = Path::new(&dest_abs)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into());
                make_dirs(root, &parent)?.join(Path::new(&dest_abs).file_name().unwrap_or_default())
            };
            crate::storage::tree::remove(&target)?;
            fs::write(&target, body).with_context(|| format!("writing {}", target.display()))?;
            fix_owner_mode(&target, owner, Some(chmod.unwrap_or(0o644)))?;
        }
        Ok(())
    })
}

/// Copies one source to `target`: a directory's contents into it (entries the ignore rules
/// exclude left out), anything else as `target`. Owners and modes as COPY sets them.
#[allow(clippy::too_many_arguments)]
fn copy_source(
    copier: &mut Copier,
    src: &Path,
    target: &Path,
    rel: &str,
    ignore: Option<&super::ignore::IgnoreRules>,
    is_dir: bool,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
) -> Result<()> {
    if !is_dir {
        let meta = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
        copier.copy_entry(src, &meta, target, Share::Copy)?;
        return fix_owner_mode(target, owner, chmod);
    }
    let mut names: Vec<_> = fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let child_rel = if rel == "." {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        if ignore.is_some_and(|i| i.is_excluded(&child_rel)) {
            continue;
        }
        let child = src.join(&name);
        let dest = target.join(&name);
        let meta =
            fs::symlink_metadata(&child).with_context(|| format!("reading {}", child.display()))?;
        if meta.is_dir() {
            copier.make_dir(&child, &meta, &dest)?;
            fix_owner_mode(&dest, owner, chmod)?;
            copy_source(
                copier, &child, &dest, &child_rel, ignore, true, owner, chmod,
            )?;
        } else {
            copier.copy_entry(&child, &meta, &dest, Share::Copy)?;
            fix_owner_mode(&dest, owner, chmod)?;
        }
    }
    Ok(())
}

fn fix_owner_mode(path: &Path, owner: Option<(u32, u32)>, chmod: Option<u32>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
    }
    if let Some(mode) = chmod {
        let meta = fs::symlink_metadata(path)?;
        if !meta.file_type().is_symlink() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        }
    }
    Ok(())
}

/// `USER[:GROUP]` as names or numbers, names looked up in the tree's /etc/passwd and
/// /etc/group.
fn resolve_owner(root: &Path, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Result<u32> {
        if let Ok(n) = name.parse() {
            return Ok(n);
        }
        let text = fs::read_to_string(root.join(file)).unwrap_or_default();
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
            .with_context(|| format!("--chown={spec}: no {name:?} in the image's /{file}"))
    };
    let uid = lookup("etc/passwd", user, 2)?;
    let gid = match group {
        Some(g) => lookup("etc/group", g, 2)?,
        None => {
            if user.parse::<u32>().is_ok() {
                uid
            } else {
                lookup("etc/passwd", user, 3)?
            }
        }
    };
    Ok((uid, gid))
}

/// The path inside `root` that `path` names, symlinks followed as the container would see
/// them (never leaving `root`).
fn resolve_in_tree(root: &Path, path: &str) -> Result<PathBuf> {
    let mut current = PathBuf::new();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&part);
        match fs::symlink_metadata(root.join(&next)) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    bail!("{path}: too many symlinks inside the image");
                }
                let target = fs::read_link(root.join(&next))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    current = PathBuf::new();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .map(String::from)
                        .rev(),
                );
            }
            _ => current = next,
        }
    }
    Ok(root.join(current))
}

/// Makes the directory `path` inside `root` (and its parents), owned by root, mode 0755;
/// returns where it is.
fn make_dirs(root: &Path, path: &str) -> Result<PathBuf> {
    let mut built = String::new();
    for part in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        built.push('/');
        built.push_str(part);
        let at = resolve_in_tree(root, &built)?;
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{built} exists in the image and is not a directory"),
            Err(_) => {
                fs::create_dir(&at).with_context(|| format!("creating {}", at.display()))?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    resolve_in_tree(root, path)
}

fn looks_like_tar(path: &Path) -> bool {
    let name = path.to_string_lossy();
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// ADD's local archive: unpacked into `target` (compression by name), names kept inside it.
fn extract_tar(src: &Path, target: &Path) -> Result<()> {
    let file = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let name = src.to_string_lossy();
    let reader: Box<dyn std::io::Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if name.ends_with(".xz") || name.ends_with(".txz") {
        Box::new(xz2::read::XzDecoder::new(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file)?)
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // `unpack` refuses entries that climb out of `target` (`..`, absolute names).
    archive
        .unpack(target)
        .with_context(|| format!("ADD: unpacking {} into the image", src.display()))
}

/// The final image: the target stage's tree hard-linked into the image store under `name`,
/// replacing an image of that name that no container uses.
fn write_image(images: &ImageStore, name: &str, last: &State, source: &str) -> Result<()> {
    if images.exists(name) {
        let old = images.get(name)?;
        let rootfs = old.rootfs();
        images
            .remove_unless_used(&old, || {
                Ok(Store::open_read()?
                    .list()?
                    .into_iter()
                    .filter(|c| c.meta.image == rootfs)
                    .map(|c| c.meta.name)
                    .collect())
            })
            .with_context(|| format!("replacing image {name}"))?;
    }
    let tree = last.tree.clone();
    let idmap = last.idmap.clone();
    let config = last.config.clone();
    images.build(name, &idmap, source, |tmp| {
        let rootfs = tmp.join("rootfs");
        run_in_userns(&idmap, move || linked_copy(tree.as_deref(), &rootfs))?;
        Ok(Built {
            found: Found {
                config,
                kind: "build".into(),
                ..Found::default()
            },
            summary: Summary::default(),
        })
    })?;
    Ok(())
}

/// `rootfs` as a copy of `tree` whose files are hard links (trees in the cache and the store
/// are never written), or empty for a stage from scratch. Runs inside the tree's user
/// namespace.
fn linked_copy(tree: Option<&Path>, rootfs: &Path) -> Result<()> {
    match tree {
        Some(t) => {
            let mut copier = Copier::default();
            copier.copy_tree(t, rootfs, Share::Link)?;
            copier.finish()?;
        }
        None => fs::create_dir(rootfs).with_context(|| format!("creating {}", rootfs.display()))?,
    }
    Ok(())
}

/// RUN containers of builds that were killed (their nook process is gone).
fn remove_leftover_containers() {
    let Ok(store) = Store::open() else { return };
    let Ok(list) = store.list() else { return };
    for c in list {
        let Some(rest) = c.meta.name.strip_prefix("nook-build-") else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| {
            p != std::process::id() as i32 && fs::metadata(format!("/proc/{p}")).is_err()
        }) {
            let _ = store.remove(&c);
        }
    }
}
