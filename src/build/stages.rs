//! A Containerfile cut into stages, checked before anything runs: the global ARGs (those before
//! the first FROM, which only FROM lines see), each stage's base (an image, `scratch`, or an
//! earlier stage by name or index), the stage `--target` names, and every instruction or option
//! nook does not support refused with its line.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::containerfile::{Args, Containerfile, Instruction};
use super::expand::{expand_pairs, expand_word};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image name or reference (expanded).
    Image(String),
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    /// `FROM … AS name`, lower case (stage names are case-insensitive).
    pub name: Option<String>,
    pub base: Base,
    /// `FROM --platform=…`, expanded.
    pub platform: Option<String>,
    pub from_line: usize,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug)]
pub struct Plan {
    /// Global ARGs with their values (a --build-arg overrides the default).
    pub global_args: BTreeMap<String, Option<String>>,
    pub stages: Vec<Stage>,
    /// The stage whose result is the image.
    pub target: usize,
}

/// Options each instruction accepts; anything else is refused by name.
fn allowed_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "RUN" => &["network"],
        "COPY" => &["from", "chown", "chmod", "link"],
        "ADD" => &["chown", "chmod", "link"],
        _ => &[],
    }
}

pub fn plan(
    file: &Containerfile,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
) -> Result<Plan> {
    let escape = file.escape;
    let mut global_args: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &file.instructions {
        check_supported(ins)?;
        if ins.keyword == "FROM" {
            let vars = global_values(&global_args);
            let Args::Text(text) = &ins.args else {
                bail!("line {}: FROM takes an image, not a JSON list", ins.line);
            };
            let words: Vec<&str> = text.split_whitespace().collect();
            let (image, alias) = match words.as_slice() {
                [image] => (*image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some(*name)),
                _ => bail!(
                    "line {}: FROM takes IMAGE [AS NAME], not {text:?}",
                    ins.line
                ),
            };
            let image = expand_word(image, &vars, escape)
                .map_err(|e| e.context(format!("line {}: FROM", ins.line)))?
                .value;
            if image.is_empty() {
                bail!(
                    "line {}: FROM {text}: the image name is empty (is an ARG unset?)",
                    ins.line
                );
            }
            let name = alias.map(|a| a.to_ascii_lowercase());
            if let Some(n) = &name {
                if stages.iter().any(|s| s.name.as_deref() == Some(n)) {
                    bail!("line {}: a stage named {n} is already defined", ins.line);
                }
            }
            let lowered = image.to_ascii_lowercase();
            let base = if lowered == "scratch" {
                Base::Scratch
            } else if let Some(s) = stages.iter().find(|s| s.name.as_deref() == Some(&lowered)) {
                Base::Stage(s.index)
            } else {
                Base::Image(image)
            };
            let platform = match ins.flags.iter().find(|(n, _)| n == "platform") {
                Some((_, Some(p))) => Some(expand_word(p, &vars, escape)?.value),
                Some((_, None)) => bail!("line {}: FROM --platform needs a value", ins.line),
                None => None,
            };
            stages.push(Stage {
                index: stages.len(),
                name,
                base,
                platform,
                from_line: ins.line,
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(ins.clone()),
            None if ins.keyword == "ARG" => {
                let Args::Text(text) = &ins.args else {
                    bail!("line {}: ARG takes NAME[=VALUE]", ins.line);
                };
                let vars = global_values(&global_args);
                // A lone NAME has no default: expand_pairs gives it an empty value, which
                // must stay "unset".
                let pairs = expand_pairs(text, &vars, escape)
                    .map_err(|e| e.context(format!("line {}: ARG", ins.line)))?
                    .value;
                let raw: Vec<&str> = text.split_whitespace().collect();
                for (k, (name, value)) in pairs.into_iter().enumerate() {
                    let has_default = raw.get(k).is_some_and(|w| w.contains('='));
                    let value = build_args
                        .get(&name)
                        .cloned()
                        .or(has_default.then_some(value));
                    global_args.insert(name, value);
                }
            }
            None => bail!(
                "line {}: {} comes before the first FROM; only ARG may",
                ins.line,
                ins.keyword
            ),
        }
    }
    if stages.is_empty() {
        bail!("the Containerfile has no FROM instruction");
    }
    for stage in &stages {
        for ins in &stage.instructions {
            if let Some(from) = flag(ins, "from") {
                let lowered = from.to_ascii_lowercase();
                let earlier = stages[..stage.index]
                    .iter()
                    .any(|s| s.name.as_deref() == Some(&lowered));
                if !earlier && lowered.parse::<usize>().is_ok_and(|i| i >= stage.index) {
                    bail!(
                        "line {}: COPY --from={from} names stage {from}, which is not an earlier \
                         stage",
                        ins.line
                    );
                }
            }
        }
    }
    let target = match target {
        None => stages.len() - 1,
        Some(t) => {
            let lowered = t.to_ascii_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(&lowered))
                .ok_or_else(|| {
                    let names: Vec<_> = stages.iter().filter_map(|s| s.name.clone()).collect();
                    anyhow::anyhow!(
                        "--target {t}: no stage has that name (stages named: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )
                })?
        }
    };
    Ok(Plan {
        global_args,
        stages,
        target,
    })
}

/// The value of an option (`--name=value`), if given.
pub fn flag<'a>(ins: &'a Instruction, name: &str) -> Option<&'a str> {
    ins.flags
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

fn global_values(args: &BTreeMap<String, Option<String>>) -> BTreeMap<String, String> {
    args.iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect()
}

fn check_supported(ins: &Instruction) -> Result<()> {
    let refuse = |why: &str| -> Result<()> {
        bail!(
            "line {}: {} is not supported by nook build: {why}",
            ins.line,
            ins.keyword
        )
    };
    match ins.keyword.as_str() {
        "HEALTHCHECK" => {
            return refuse("nook runs no health checks; remove the line or keep it for podman")
        }
        "MAINTAINER" => return refuse("it is deprecated; use LABEL maintainer=…"),
        _ => {}
    }
    let allowed = allowed_flags(&ins.keyword);
    for (name, _) in &ins.flags {
        if !allowed.contains(&name.as_str()) {
            bail!(
                "line {}: {} --{name} is not supported by nook build{}",
                ins.line,
                ins.keyword,
                if allowed.is_empty() {
                    String::new()
                } else {
                    format!(" (it takes --{})", allowed.join(", --"))
                }
            );
        }
    }
    if ins.keyword == "ONBUILD" {
        if let Args::Text(text) = &ins.args {
            let inner = text.split_whitespace().next().unwrap_or("");
            if matches!(
                inner.to_ascii_uppercase().as_str(),
                "ONBUILD" | "FROM" | "MAINTAINER"
            ) {
                bail!(
                    "line {}: ONBUILD {inner} is not allowed (Docker refuses it too)",
                    ins.line
                );
            }
        }
    }
    if !ins.heredocs.is_empty() && ins.keyword == "ADD" {
        refuse("here-documents are supported in RUN and COPY only")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::containerfile::parse;
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn global_args_feed_from_and_stages_resolve_by_name() {
        let file = parse(
            "ARG BASE=busybox\nARG TAG\nFROM $BASE${TAG:+:$TAG} AS Build\nRUN true\n\
             FROM build\nCOPY --from=build /a /b\nFROM scratch AS final\n",
        )
        .unwrap();
        let p = plan(&file, &args(&[]), None).unwrap();
        assert_eq!(p.stages.len(), 3);
        assert_eq!(p.stages[0].base, Base::Image("busybox".into()));
        assert_eq!(p.stages[0].name.as_deref(), Some("build"));
        assert_eq!(p.stages[1].base, Base::Stage(0));
        assert_eq!(p.stages[2].base, Base::Scratch);
        assert_eq!(p.target, 2);
        assert_eq!(p.global_args.get("TAG"), Some(&None));
        let p = plan(&file, &args(&[("TAG", "1.36")]), Some("BUILD")).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("busybox:1.36".into()));
        assert_eq!(p.target, 0);
        let e = plan(&file, &args(&[]), Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("build, final"), "{e}");
    }

    #[test]
    fn refusals_name_the_line() {
        for (text, want) in [
            ("FROM a\nHEALTHCHECK CMD true\n", "line 2: HEALTHCHECK"),
            (
                "FROM a\nRUN --mount=type=cache,target=/x true\n",
                "RUN --mount",
            ),
            ("FROM a\nCOPY --exclude=x . /\n", "COPY --exclude"),
            (
                "RUN true\nFROM a\n",
                "line 1: RUN comes before the first FROM",
            ),
            ("ARG X\n", "no FROM"),
            ("FROM a AS x\nFROM b AS X\n", "line 2: a stage named x"),
            ("FROM a\nONBUILD FROM b\n", "ONBUILD FROM"),
            ("FROM $NOTSET\n", "image name is empty"),
            (
                "FROM a\nCOPY --from=1 /x /y\nFROM b\n",
                "not an earlier stage",
            ),
        ] {
            let e = parse(text)
                .and_then(|f| plan(&f, &BTreeMap::new(), None))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
