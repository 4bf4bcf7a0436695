//! OCI lifecycle hooks: programs the spec names, run at fixed points with the container's state
//! on their stdin.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ContainerState, Hook, Hooks, Spec, State};

/// The OCI runtime spec version nook implements.
pub const OCI_VERSION: &str = "1.2.0";

/// What a container's hooks need: the hooks themselves and the state they are told about.
#[derive(Clone, Debug)]
pub struct HookContext {
    hooks: Hooks,
    id: String,
    bundle: PathBuf,
    annotations: Option<HashMap<String, String>>,
}

/// The state document of the runtime spec, as `nook state` prints it and hooks read it.
pub fn state_document(
    id: &str,
    status: ContainerState,
    pid: Option<i32>,
    bundle: &std::path::Path,
    annotations: Option<HashMap<String, String>>,
) -> State {
    let mut state = State::default();
    state.set_version(OCI_VERSION.to_string());
    state.set_id(id.to_string());
    state.set_status(status);
    state.set_pid(pid);
    state.set_bundle(bundle.to_path_buf());
    state.set_annotations(annotations);
    state
}

impl HookContext {
    /// The hooks of `spec`, or `None` when it has none.
    pub fn of(spec: &Spec, id: &str, bundle: &std::path::Path) -> Option<HookContext> {
        Some(HookContext {
            hooks: spec.hooks().clone()?,
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            annotations: spec.annotations().clone(),
        })
    }

    fn state(&self, status: ContainerState, pid: i32) -> String {
        let doc = state_document(
            &self.id,
            status,
            Some(pid),
            &self.bundle,
            self.annotations.clone(),
        );
        serde_json::to_string(&doc).unwrap_or_default()
    }

    #[allow(deprecated)] // `prestart` is deprecated in the spec, and still honoured.
    fn prestart(&self) -> &[Hook] {
        self.hooks.prestart().as_deref().unwrap_or_default()
    }

    /// Whether anything must run between the mounts and `pivot_root`.
    pub fn has_create_hooks(&self) -> bool {
        !self.prestart().is_empty()
            || self
                .hooks
                .create_runtime()
                .as_ref()
                .is_some_and(|h| !h.is_empty())
            || self
                .hooks
                .create_container()
                .as_ref()
                .is_some_and(|h| !h.is_empty())
    }

    /// `prestart` (legacy) and `createRuntime`, in the runtime's namespaces.
    pub fn run_create_runtime(&self, pid: i32) -> Result<()> {
        let state = self.state(ContainerState::Creating, pid);
        run_all("prestart", self.prestart(), &state)?;
        run_all("createRuntime", list(self.hooks.create_runtime()), &state)
    }

    /// `createContainer`, in the container's namespaces before `pivot_root`.
    pub fn run_create_container(&self, pid: i32) -> Result<()> {
        let state = self.state(ContainerState::Creating, pid);
        run_all(
            "createContainer",
            list(self.hooks.create_container()),
            &state,
        )
    }

    /// `startContainer`, in the container after `start`, before the command: the container
    /// is still `created` then (as runc reports it).
    pub fn run_start_container(&self, pid: i32) -> Result<()> {
        let state = self.state(ContainerState::Created, pid);
        run_all("startContainer", list(self.hooks.start_container()), &state)
    }

    /// `poststart`, in the runtime's namespaces once the command runs. A failure is only
    /// worth a warning (the spec's words): every hook runs, and the error lists those that failed.
    pub fn run_poststart(&self, pid: i32) -> Result<()> {
        let state = self.state(ContainerState::Running, pid);
        run_each("poststart", list(self.hooks.poststart()), &state)
    }

    /// `poststop`, in the runtime's namespaces once the container is deleted; like `poststart`,
    /// every hook runs whatever the others do.
    pub fn run_poststop(&self, pid: i32) -> Result<()> {
        let state = self.state(ContainerState::Stopped, pid);
        run_each("poststop", list(self.hooks.poststop()), &state)
    }
}

/// Runs every hook of a phase whose failures do not stop it; fails naming each that failed.
fn run_each(phase: &str, hooks: &[Hook], state: &str) -> Result<()> {
    let failures: Vec<String> = hooks
        .iter()
        .enumerate()
        .filter_map(|(i, hook)| {
            run_hook(hook, state).err().map(|e| {
                format!(
                    "hooks.{phase}[{i}] ({}) failed: {e:#}",
                    hook.path().display()
                )
            })
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

fn list(hooks: &Option<Vec<Hook>>) -> &[Hook] {
    hooks.as_deref().unwrap_or_default()
}

fn run_all(phase: &str, hooks: &[Hook], state: &str) -> Result<()> {
    for (i, hook) in hooks.iter().enumerate() {
        run_hook(hook, state)
            .with_context(|| format!("hooks.{phase}[{i}] ({}) failed", hook.path().display()))?;
    }
    Ok(())
}

/// Runs one hook: `path` with `args` (whose first element is argv[0]) and exactly `env`, the
/// state on stdin; killed when its `timeout` (seconds) passes.
fn run_hook(hook: &Hook, state: &str) -> Result<()> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for var in hook.env().iter().flatten() {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().context("starting it")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = match hook.timeout() {
        Some(t) if t <= 0 => bail!("timeout must be greater than zero, not {t}"),
        Some(t) => Some(Instant::now() + Duration::from_secs(t as u64)),
        None => None,
    };
    loop {
        if let Some(status) = child.try_wait().context("waiting for it")? {
            if status.success() {
                return Ok(());
            }
            bail!("it exited with {status}");
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "it timed out after {} s and was killed",
                hook.timeout().unwrap_or(0)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hooks_get_the_state_on_stdin_and_their_own_env() {
        let out = std::env::temp_dir().join(format!("nook-hook-{}", std::process::id()));
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}; echo $X >> {}"],"env":["X=y"]}}"#,
            out.display(),
            out.display()
        ));
        run_hook(&h, r#"{"id":"c1"}"#).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(text, "{\"id\":\"c1\"}y\n");
    }

    #[test]
    fn a_failing_poststop_hook_does_not_stop_the_others() {
        let out = std::env::temp_dir().join(format!("nook-hooks-each-{}", std::process::id()));
        let touch = format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","echo ran >> {}"]}}"#,
            out.display()
        );
        let hooks = [
            hook(r#"{"path":"/bin/false"}"#),
            hook(&touch),
            hook(r#"{"path":"/bin/false"}"#),
        ];
        let err = run_each("poststop", &hooks, "{}").unwrap_err().to_string();
        let ran = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        assert_eq!(ran, "ran\n");
        assert!(
            err.contains("hooks.poststop[0]") && err.contains("hooks.poststop[2]"),
            "{err}"
        );
    }

    #[test]
    fn failing_and_slow_hooks_are_errors() {
        let err = run_hook(&hook(r#"{"path":"/bin/false"}"#), "{}").unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
        let slow = hook(r#"{"path":"/bin/sleep","args":["sleep","5"],"timeout":1}"#);
        let started = Instant::now();
        let err = run_hook(&slow, "{}").unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
