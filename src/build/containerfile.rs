//! Reading a Containerfile into instructions: parser directives (`# escape=`), comments, line
//! continuations, the JSON (exec) form, `--flag` options and here-documents, with the line each
//! instruction starts on. What an instruction means is the executor's business; this module only
//! finds its parts, as Docker's own parser does.
//!
//! Written here rather than taken from `parse-dockerfile` (0.1.9): that crate sees a
//! here-document only when `<<` starts the arguments, so `RUN cat <<EOF > /file`, which Docker
//! accepts, fails there as an unknown instruction on the document's first line.

use anyhow::{bail, Result};

/// A parsed Containerfile.
#[derive(Debug)]
pub struct Containerfile {
    /// The escape character (`\`, or what `# escape=` says).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// One instruction.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// 1-based line of the keyword.
    pub line: usize,
    /// Upper case: `RUN`, `COPY`, …
    pub keyword: String,
    /// `--name=value` (or `--name`) options before the arguments, for the instructions that
    /// take them (FROM, RUN, COPY, ADD).
    pub flags: Vec<(String, Option<String>)>,
    pub args: Args,
    /// Here-documents the arguments open, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction as written (continuations joined), for messages and the step line.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["a", "b"]`
    Json(Vec<String>),
    /// Anything else, continuations removed, escapes and quotes as written.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub delimiter: String,
    /// False when the delimiter was quoted (`<<'EOF'`): no expansion in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body's lines.
    pub strip_tabs: bool,
    /// The body's lines as written, each ending in a newline.
    pub raw: String,
}

impl Heredoc {
    /// The body as the document delivers it (tabs stripped for `<<-`).
    pub fn body(&self) -> String {
        if !self.strip_tabs {
            return self.raw.clone();
        }
        self.raw
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

const KNOWN: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions whose leading `--name=value` words are options.
const TAKES_FLAGS: &[&str] = &["FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"];
/// Instructions that have a JSON form.
const TAKES_JSON: &[&str] = &["RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME", "COPY", "ADD"];
/// Instructions whose arguments may open here-documents.
const TAKES_HEREDOCS: &[&str] = &["RUN", "COPY", "ADD"];

pub fn parse(text: &str) -> Result<Containerfile> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: `# key=value` lines at the very top, before anything else.
    while i < lines.len() {
        let Some(rest) = lines[i].trim_start().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.contains(char::is_whitespace) || key.is_empty() {
            break;
        }
        let value = value.trim();
        match key.as_str() {
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => bail!(
                        "line {}: the escape directive takes \\ or `, not {value:?}",
                        i + 1
                    ),
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        i += 1;
    }
    let mut instructions = Vec::new();
    while i < lines.len() {
        let trimmed = lines[i].trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut logical = String::new();
        loop {
            let line = lines[i];
            i += 1;
            match continued(line, escape) {
                Some(head) => {
                    logical.push_str(head);
                    // Comment and empty lines inside a continuation are dropped, as Docker does.
                    while i < lines.len() {
                        let t = lines[i].trim();
                        if t.is_empty() || t.starts_with('#') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if i >= lines.len() {
                        break;
                    }
                }
                None => {
                    logical.push_str(line);
                    break;
                }
            }
        }
        let logical = logical.trim().to_string();
        let (word, rest) = match logical.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim_start()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if !KNOWN.contains(&keyword.as_str()) {
            bail!("line {}: unknown instruction {word:?}", start + 1);
        }
        let mut rest = rest.to_string();
        let mut flags = Vec::new();
        if TAKES_FLAGS.contains(&keyword.as_str()) {
            while let Some(after) = rest.strip_prefix("--") {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                let flag = &after[..end];
                let (name, value) = match flag.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (flag.to_string(), None),
                };
                if name.is_empty() {
                    bail!("line {}: {keyword}: an empty option (--)", start + 1);
                }
                flags.push((name, value));
                rest = after[end..].trim_start().to_string();
            }
        }
        let mut args = Args::Text(rest.clone());
        if TAKES_JSON.contains(&keyword.as_str()) && rest.starts_with('[') {
            if let Ok(list) = serde_json::from_str::<Vec<String>>(&rest) {
                args = Args::Json(list);
            }
        }
        let mut heredocs = Vec::new();
        if let (Args::Text(text), true) = (&args, TAKES_HEREDOCS.contains(&keyword.as_str())) {
            for (delimiter, expand, strip_tabs) in heredoc_openings(text) {
                let mut raw = String::new();
                loop {
                    let Some(line) = lines.get(i) else {
                        bail!(
                            "line {}: {keyword}: the here-document <<{delimiter} has no \
                             closing {delimiter} line",
                            start + 1
                        );
                    };
                    i += 1;
                    let candidate = if strip_tabs {
                        line.trim_start_matches('\t')
                    } else {
                        line
                    };
                    if candidate == delimiter {
                        break;
                    }
                    raw.push_str(line);
                    raw.push('\n');
                }
                heredocs.push(Heredoc {
                    delimiter,
                    expand,
                    strip_tabs,
                    raw,
                });
            }
        }
        instructions.push(Instruction {
            line: start + 1,
            keyword,
            flags,
            args,
            heredocs,
            text: logical,
        });
    }
    Ok(Containerfile {
        escape,
        instructions,
    })
}

/// The line without its trailing escape character when it continues on the next line.
fn continued(line: &str, escape: char) -> Option<&str> {
    // As Docker's parser: the escape character and trailing blanks end the line, whatever
    // precedes it.
    line.trim_end_matches([' ', '\t']).strip_suffix(escape)
}

/// The here-documents `text` opens: `<<WORD`, `<<-WORD`, `<<"WORD"`, `<<'WORD'`, outside
/// quotes. Returns (delimiter, expand, strip_tabs).
fn heredoc_openings(text: &str) -> Vec<(String, bool, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut quote: Option<char> = None;
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            k += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            k += 1;
            continue;
        }
        if c == '<' && chars.get(k + 1) == Some(&'<') && chars.get(k + 2) != Some(&'<') {
            let mut j = k + 2;
            let strip_tabs = chars.get(j) == Some(&'-');
            if strip_tabs {
                j += 1;
            }
            let quoted = match chars.get(j) {
                Some(&q @ ('\'' | '"')) => {
                    j += 1;
                    Some(q)
                }
                _ => None,
            };
            let begin = j;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j > begin && (chars[begin].is_ascii_alphabetic() || chars[begin] == '_') {
                let word: String = chars[begin..j].iter().collect();
                let closed = match quoted {
                    Some(q) if chars.get(j) == Some(&q) => {
                        j += 1;
                        true
                    }
                    Some(_) => false,
                    None => true,
                };
                if closed {
                    found.push((word, quoted.is_none(), strip_tabs));
                    k = j;
                    continue;
                }
            }
        }
        k += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_comments_and_continuations() {
        let f = parse(
            "# escape=`\n# a comment\nFROM busybox AS b\nRUN echo a `\n  # inside\n  && echo b\n\
             env A=1\n",
        )
        .unwrap();
        assert_eq!(f.escape, '`');
        assert_eq!(f.instructions.len(), 3);
        assert_eq!(f.instructions[0].line, 3);
        assert_eq!(f.instructions[1].line, 4);
        assert_eq!(
            f.instructions[1].args,
            Args::Text("echo a   && echo b".into())
        );
        assert_eq!(f.instructions[2].keyword, "ENV");
        assert_eq!(f.instructions[2].line, 7);
    }

    #[test]
    fn a_directive_after_a_comment_is_a_comment() {
        let f = parse("# hello\n# escape=`\nFROM a\nRUN x \\\n y\n").unwrap();
        assert_eq!(f.escape, '\\');
        assert_eq!(f.instructions[1].args, Args::Text("x  y".into()));
    }

    #[test]
    fn flags_and_json() {
        let f = parse(
            "COPY --from=build --chown=1:2 a b /d/\nCMD [\"sh\", \"-c\", \"x\"]\nCMD [oops\n\
             RUN --network=none true\n",
        )
        .unwrap();
        let copy = &f.instructions[0];
        assert_eq!(
            copy.flags,
            vec![
                ("from".into(), Some("build".into())),
                ("chown".into(), Some("1:2".into()))
            ]
        );
        assert_eq!(copy.args, Args::Text("a b /d/".into()));
        assert_eq!(
            f.instructions[1].args,
            Args::Json(vec!["sh".into(), "-c".into(), "x".into()])
        );
        // Not valid JSON: the shell form, as Docker falls back.
        assert_eq!(f.instructions[2].args, Args::Text("[oops".into()));
        assert_eq!(f.instructions[3].flags[0].0, "network");
    }

    #[test]
    fn heredocs_anywhere_in_the_arguments() {
        let f = parse(
            "RUN <<EOF\necho hi\nEOF\nRUN cat <<-'X' > /f && cat <<Y >> /f\n\tbody $HOME\n\tX\n\
             two\nY\nCOPY <<EOF /etc/x\ncontent\nEOF\nRUN echo '<<NOT' \"<<NOR\"\n",
        )
        .unwrap();
        assert_eq!(f.instructions.len(), 4);
        assert_eq!(f.instructions[0].heredocs[0].raw, "echo hi\n");
        let two = &f.instructions[1];
        assert_eq!(two.line, 4);
        assert_eq!(two.heredocs.len(), 2);
        assert!(!two.heredocs[0].expand && two.heredocs[0].strip_tabs);
        assert_eq!(two.heredocs[0].body(), "body $HOME\n");
        assert_eq!(two.heredocs[1].raw, "two\n");
        assert!(two.heredocs[1].expand);
        assert_eq!(f.instructions[2].line, 9);
        assert_eq!(f.instructions[2].heredocs[0].raw, "content\n");
        assert!(f.instructions[3].heredocs.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("FROM a\nRUNN x\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("RUNN"), "{e}");
        let e = parse("FROM a\nRUN cat <<EOF\nno end\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("closing EOF"), "{e}");
    }
}
