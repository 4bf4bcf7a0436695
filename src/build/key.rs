//! Step cache keys, as precise as BuildKit's: a step is reused when
//! sha256(parent key ‖ normalized instruction ‖ the ARG/ENV values the step uses ‖ content hash
//! of its sources) matches. "Uses" is what the step's expansion referenced, plus, for RUN, every
//! ARG and ENV in scope (they are its environment, as in BuildKit). A variable the step does not
//! use is not part of the key, so changing it does not invalidate the step.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// What goes into one step's key.
pub struct StepInputs<'a> {
    /// The previous step's key, or the base's identity for a stage's first step.
    pub parent: &'a str,
    /// Keyword and arguments as written (continuations joined), with its flags.
    pub instruction: &'a str,
    /// Here-document bodies, which the instruction line does not hold.
    pub heredocs: &'a [String],
    /// Every variable in scope (ARG and ENV), by name.
    pub scope: &'a BTreeMap<String, String>,
    /// The names the step uses (`Expanded::used`); ignored when `whole_scope`.
    pub used: &'a BTreeSet<String>,
    /// RUN: the whole scope is the command's environment.
    pub whole_scope: bool,
    /// USER, WORKDIR, SHELL, network: what else shapes the step's result.
    pub settings: &'a [(&'a str, String)],
    /// COPY/ADD: `BuildContext::content_hash` (or the source stage's key).
    pub content: Option<&'a str>,
}

pub fn step_key(inputs: &StepInputs<'_>) -> String {
    let mut hash = Sha256::new();
    let mut field = |label: &str, value: &[u8]| {
        hash.update(label.as_bytes());
        hash.update((value.len() as u64).to_le_bytes());
        hash.update(value);
    };
    field("parent", inputs.parent.as_bytes());
    field("instruction", inputs.instruction.trim().as_bytes());
    for body in inputs.heredocs {
        field("heredoc", body.as_bytes());
    }
    for (name, value) in inputs.scope {
        if inputs.whole_scope || inputs.used.contains(name) {
            field("var", name.as_bytes());
            field("value", value.as_bytes());
        }
    }
    // A used name that is unset is an input too: setting it later must invalidate.
    for name in inputs.used {
        if !inputs.scope.contains_key(name) {
            field("unset", name.as_bytes());
        }
    }
    for (name, value) in inputs.settings {
        field(name, value.as_bytes());
    }
    if let Some(content) = inputs.content {
        field("content", content.as_bytes());
    }
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: &[(&str, &str)], used: &[&str], run: bool, content: Option<&str>) -> String {
        let scope: BTreeMap<String, String> = scope
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let used: BTreeSet<String> = used.iter().map(|s| s.to_string()).collect();
        step_key(&StepInputs {
            parent: "base",
            instruction: "COPY $SRC /app",
            heredocs: &[],
            scope: &scope,
            used: &used,
            whole_scope: run,
            settings: &[("workdir", "/".into())],
            content,
        })
    }

    #[test]
    fn only_used_variables_count_except_for_run() {
        let a = key(&[("SRC", "a"), ("OTHER", "1")], &["SRC"], false, Some("h"));
        assert_eq!(
            a,
            key(&[("SRC", "a"), ("OTHER", "2")], &["SRC"], false, Some("h"))
        );
        assert_ne!(
            a,
            key(&[("SRC", "b"), ("OTHER", "1")], &["SRC"], false, Some("h"))
        );
        assert_ne!(
            a,
            key(&[("SRC", "a"), ("OTHER", "1")], &["SRC"], false, Some("g"))
        );
        let run = key(&[("SRC", "a"), ("OTHER", "1")], &[], true, None);
        assert_ne!(run, key(&[("SRC", "a"), ("OTHER", "2")], &[], true, None));
    }

    #[test]
    fn setting_a_used_unset_variable_invalidates() {
        assert_ne!(
            key(&[], &["SRC"], false, None),
            key(&[("SRC", "")], &["SRC"], false, None)
        );
    }
}
