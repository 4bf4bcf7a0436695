//! Docker's variable substitution in Containerfile instructions
//! (docs.docker.com/reference/dockerfile/#environment-replacement), following the rules of
//! Docker's own shell lexer: `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:+word}`, `${VAR:?word}`
//! and the same without the colon (unset only, not empty), words that nest further expansions,
//! the escape character (`\`, or the `# escape=` directive's) taking the next character
//! literally, no expansion inside single quotes, expansion inside double quotes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

/// Variables a word or line may use: lookup by name.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

impl Vars for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// The result and the names it referenced (set or not): what the cache key must include.
pub struct Expanded<T> {
    pub value: T,
    pub used: BTreeSet<String>,
}

/// One word as Docker's `ProcessWord` treats the argument of WORKDIR, USER, FROM, a KEY or
/// VALUE…: quotes removed, variables expanded, whitespace kept (no splitting).
pub fn expand_word(word: &str, vars: &dyn Vars, escape: char) -> Result<Expanded<String>> {
    let mut lexer = Lexer::new(word, vars, escape);
    let (text, _) = lexer
        .until(None)
        .map_err(|e| e.context(format!("expanding {word:?}")))?;
    Ok(Expanded {
        value: text,
        used: lexer.used,
    })
}

/// A shell-form argument list split into words as Docker's lexer does (quotes removed,
/// expansion inside double quotes and bare, not inside single quotes); a bare variable's value
/// is split on whitespace, a quoted one is not.
pub fn expand_words(line: &str, vars: &dyn Vars, escape: char) -> Result<Expanded<Vec<String>>> {
    let mut lexer = Lexer::new(line, vars, escape);
    let (_, words) = lexer
        .until(None)
        .map_err(|e| e.context(format!("expanding {line:?}")))?;
    Ok(Expanded {
        value: words,
        used: lexer.used,
    })
}

/// KEY=VALUE pairs (ENV, ARG, LABEL): the line is split on unquoted whitespace, each word cut
/// at its first `=`, key and value each expanded as one word. When the first word has no `=`,
/// ENV's legacy form: `KEY value with spaces` (the rest of the line is the value); a lone name
/// (`ARG NAME`) gives an empty value.
pub fn expand_pairs(
    line: &str,
    vars: &dyn Vars,
    escape: char,
) -> Result<Expanded<Vec<(String, String)>>> {
    let words = raw_words(line, escape);
    let mut used = BTreeSet::new();
    let mut word = |text: &str| -> Result<String> {
        let e = expand_word(text, vars, escape)?;
        used.extend(e.used);
        Ok(e.value)
    };
    let mut pairs = Vec::new();
    match words.first() {
        None => bail!("expected KEY=VALUE, found nothing"),
        Some(first) if !first.contains('=') => {
            let rest = line.trim_start();
            let value = rest[first.len()..].trim();
            let key = word(first)?;
            check_key(&key, first)?;
            pairs.push((key, word(value)?));
        }
        Some(_) => {
            for raw in &words {
                let Some((k, v)) = raw.split_once('=') else {
                    bail!("{raw:?}: expected KEY=VALUE (every word once the first has '=')");
                };
                let key = word(k)?;
                check_key(&key, raw)?;
                pairs.push((key, word(v)?));
            }
        }
    }
    Ok(Expanded { value: pairs, used })
}

fn check_key(key: &str, raw: &str) -> Result<()> {
    if key.is_empty() {
        bail!("{raw:?}: the name before '=' is empty");
    }
    if key.chars().any(char::is_whitespace) {
        bail!("{raw:?}: a name cannot hold whitespace");
    }
    Ok(())
}

/// Docker's parser's word split for KEY=VALUE lines: on unquoted whitespace, quotes and escapes
/// kept in the words (the expansion of each part removes them later).
fn raw_words(line: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                word.push(c);
                if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
            }
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The words being built: a bare character ends a word on whitespace, a quoted or escaped one
/// never does; a word exists once a character has been added to it.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    current: String,
    in_word: bool,
}

impl Words {
    fn bare(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word {
                self.done.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.raw(c);
        }
    }

    fn raw(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if self.in_word {
            self.done.push(self.current);
        }
        self.done
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    escape: char,
    used: BTreeSet<String>,
}

impl<'a> Lexer<'a> {
    fn new(text: &str, vars: &'a dyn Vars, escape: char) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            vars,
            escape,
            used: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    /// Text from `start` on, for error messages.
    fn from(&self, start: usize) -> String {
        self.chars[start..].iter().collect()
    }

    /// Reads up to `stop` (consumed) or the end: the text as one string and as words.
    fn until(&mut self, stop: Option<char>) -> Result<(String, Vec<String>)> {
        let mut text = String::new();
        let mut words = Words::default();
        loop {
            let Some(c) = self.peek() else {
                if let Some(stop) = stop {
                    bail!("unexpected end of text while looking for a matching {stop:?}");
                }
                break;
            };
            if Some(c) == stop {
                self.pos += 1;
                break;
            }
            match c {
                '\'' => {
                    let s = self.single_quoted()?;
                    s.chars().for_each(|c| words.raw(c));
                    text.push_str(&s);
                }
                '"' => {
                    let s = self.double_quoted()?;
                    s.chars().for_each(|c| words.raw(c));
                    text.push_str(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    s.chars().for_each(|c| words.bare(c));
                    text.push_str(&s);
                }
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        // An escape at the very end is dropped, as Docker does.
                        let Some(escaped) = self.next() else { break };
                        words.raw(escaped);
                        text.push(escaped);
                    } else {
                        words.bare(c);
                        text.push(c);
                    }
                }
            }
        }
        Ok((text, words.finish()))
    }

    fn single_quoted(&mut self) -> Result<String> {
        let start = self.pos;
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.next() {
                None => bail!("unterminated single quote: {}", self.from(start)),
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }

    /// Inside double quotes the escape character escapes only `"`, `$` and itself; any other
    /// use of it stays as written.
    fn double_quoted(&mut self) -> Result<String> {
        let start = self.pos;
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => bail!("unterminated double quote: {}", self.from(start)),
                Some('"') => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                s.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    s.push(c);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        self.used.insert(name.to_string());
        self.vars.get(name)
    }

    /// A variable name as the shell reads it: digits only if it starts with one (`$1`), one
    /// special parameter character, or letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    name.push(c);
                    self.pos += 1;
                }
            }
            Some(c) if "*#@!?-$".contains(c) => {
                name.push(c);
                self.pos += 1;
            }
            _ => {
                while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String> {
        let start = self.pos;
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => bail!("unterminated ${{: {}", self.from(start)),
            Some('{' | '}' | ':') => bail!("bad substitution: {}", self.substitution(start)),
            Some(_) => {}
        }
        let name = self.name();
        if name.is_empty() {
            bail!("bad variable name in {}", self.substitution(start));
        }
        let colon = self.peek() == Some(':');
        if colon {
            self.pos += 1;
        }
        let op = match self.next() {
            None => bail!("unterminated ${{: {}", self.from(start)),
            Some('}') if !colon => return Ok(self.lookup(&name).unwrap_or_default()),
            Some(c @ ('-' | '+' | '?')) => c,
            Some(c) => {
                self.pos -= 1;
                bail!(
                    "unsupported {c:?} after the name in {} (nook knows ${{NAME}}, \
                     ${{NAME:-word}}, ${{NAME:+word}}, ${{NAME:?word}}, and those without ':')",
                    self.substitution(start)
                )
            }
        };
        let (word, _) = self
            .until(Some('}'))
            .map_err(|_| anyhow::anyhow!("unterminated ${{: {}", self.from(start)))?;
        let value = self.lookup(&name);
        // With ':' an empty value counts as unset.
        let set = match &value {
            Some(v) => !colon || !v.is_empty(),
            None => false,
        };
        Ok(match op {
            '-' if set => value.unwrap_or_default(),
            '-' => word,
            '+' if set => word,
            '+' => String::new(),
            _ if set => value.unwrap_or_default(),
            _ if word.is_empty() => bail!("{name}: is not allowed to be unset or empty"),
            _ => bail!("{name}: {word}"),
        })
    }

    /// `${…` up to its `}` (or the end), for messages.
    fn substitution(&self, start: usize) -> String {
        let rest = &self.chars[start..];
        let end = rest
            .iter()
            .position(|c| *c == '}')
            .map_or(rest.len(), |i| i + 1);
        rest[..end].iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn word(text: &str, v: &[(&str, &str)]) -> String {
        expand_word(text, &vars(v), '\\').unwrap().value
    }

    fn words(text: &str, v: &[(&str, &str)]) -> Vec<String> {
        expand_words(text, &vars(v), '\\').unwrap().value
    }

    fn pairs(text: &str, v: &[(&str, &str)]) -> Vec<(String, String)> {
        expand_pairs(text, &vars(v), '\\').unwrap().value
    }

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(text: &str) -> String {
        format!("{:#}", expand_word(text, &vars(&[]), '\\').err().unwrap())
    }

    // The example of docs.docker.com/reference/dockerfile/#environment-replacement.
    #[test]
    fn documented_example_workdir_add_copy() {
        let env = [("FOO", "/bar")];
        assert_eq!(word("${FOO}", &env), "/bar");
        assert_eq!(words(". $FOO", &env), [".", "/bar"]);
        assert_eq!(words("\\$FOO /quux", &env), ["$FOO", "/quux"]);
        assert_eq!(word("\\${FOO}", &env), "${FOO}");
    }

    #[test]
    fn braces_delimit_the_name() {
        assert_eq!(word("${foo}_bar", &[("foo", "x")]), "x_bar");
        assert_eq!(word("$foo_bar", &[("foo", "x")]), "");
        assert_eq!(word("$foo-bar", &[("foo", "x")]), "x-bar");
    }

    #[test]
    fn colon_modifiers_treat_empty_as_unset() {
        let set = [("v", "val")];
        let empty = [("v", "")];
        assert_eq!(word("${v:-word}", &set), "val");
        assert_eq!(word("${v:-word}", &empty), "word");
        assert_eq!(word("${v:-word}", &[]), "word");
        assert_eq!(word("${v:+word}", &set), "word");
        assert_eq!(word("${v:+word}", &empty), "");
        assert_eq!(word("${v:+word}", &[]), "");
    }

    #[test]
    fn modifiers_without_colon_only_look_at_unset() {
        let empty = [("v", "")];
        assert_eq!(word("${v-word}", &empty), "");
        assert_eq!(word("${v-word}", &[]), "word");
        assert_eq!(word("${v+word}", &empty), "word");
        assert_eq!(word("${v+word}", &[]), "");
    }

    #[test]
    fn question_mark_requires_a_value() {
        assert_eq!(word("${v:?must be set}", &[("v", "x")]), "x");
        let e = format!(
            "{:#}",
            expand_word("${v:?must be set}", &vars(&[]), '\\')
                .err()
                .unwrap()
        );
        assert!(e.contains("v: must be set"), "{e}");
        assert_eq!(word("${v?}", &[("v", "")]), "");
    }

    #[test]
    fn default_words_nest_and_may_be_quoted() {
        let env = [("b", "B")];
        assert_eq!(word("${a:-$b}", &env), "B");
        assert_eq!(word("${a:-${c:-${b}x}}", &env), "Bx");
        assert_eq!(word("${a:-'x y'}", &env), "x y");
        assert_eq!(word("${b:+\"$b $b\"}", &env), "B B");
        assert_eq!(word("${a:-a\\}b}", &env), "a}b");
    }

    // docs.docker.com/reference/dockerfile/#arg: `ENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}`.
    #[test]
    fn documented_arg_default_through_env() {
        assert_eq!(
            pairs("CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}", &[]),
            kv(&[("CONT_IMG_VER", "v1.0.0")])
        );
        assert_eq!(
            pairs(
                "CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}",
                &[("CONT_IMG_VER", "v2.0.1")]
            ),
            kv(&[("CONT_IMG_VER", "v2.0.1")])
        );
    }

    #[test]
    fn escape_takes_the_next_character_literally() {
        assert_eq!(word("a\\ b", &[]), "a b");
        assert_eq!(word("\\\\$v", &[("v", "x")]), "\\x");
        assert_eq!(word("trailing\\", &[]), "trailing");
        assert_eq!(words("a\\ b c", &[]), ["a b", "c"]);
    }

    #[test]
    fn backtick_escape_leaves_backslashes_alone() {
        let env = vars(&[("v", "x")]);
        assert_eq!(
            expand_word("C:\\dir\\$v", &env, '`').unwrap().value,
            "C:\\dir\\x"
        );
        assert_eq!(expand_word("`$v", &env, '`').unwrap().value, "$v");
        assert_eq!(expand_word("\"a`\"b\"", &env, '`').unwrap().value, "a\"b");
    }

    #[test]
    fn single_quotes_are_literal_double_quotes_expand() {
        let env = [("v", "x")];
        assert_eq!(word("'$v \\$v'", &env), "$v \\$v");
        assert_eq!(word("\"$v '$v'\"", &env), "x 'x'");
        assert_eq!(word("\"a\\\"b \\$v \\n\"", &env), "a\"b $v \\n");
        assert_eq!(word("pre'$v'\"$v\"post", &env), "pre$vxpost");
    }

    #[test]
    fn words_split_bare_values_but_not_quoted_ones() {
        let env = [("v", "a  b")];
        assert_eq!(words("$v c", &env), ["a", "b", "c"]);
        assert_eq!(words("\"$v\" c", &env), ["a  b", "c"]);
        assert_eq!(words("  x\t'y z'  ", &env), ["x", "y z"]);
        assert_eq!(words("x$v", &env), ["xa", "b"]);
        assert!(words("$unset", &env).is_empty());
        assert_eq!(word("$v", &env), "a  b");
    }

    #[test]
    fn a_lone_dollar_stays() {
        assert_eq!(word("a$", &[]), "a$");
        assert_eq!(word("$ x", &[]), "$ x");
        assert_eq!(word("cost: $5", &[("5", "five")]), "cost: five");
    }

    // docs.docker.com/reference/dockerfile/#env.
    #[test]
    fn documented_env_forms() {
        assert_eq!(
            pairs("MY_NAME=\"John Doe\"", &[]),
            kv(&[("MY_NAME", "John Doe")])
        );
        assert_eq!(
            pairs("MY_DOG=Rex\\ The\\ Dog", &[]),
            kv(&[("MY_DOG", "Rex The Dog")])
        );
        assert_eq!(
            pairs(
                "MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy",
                &[]
            ),
            kv(&[
                ("MY_NAME", "John Doe"),
                ("MY_DOG", "Rex The Dog"),
                ("MY_CAT", "fluffy")
            ])
        );
        assert_eq!(pairs("MY_VAR my-value", &[]), kv(&[("MY_VAR", "my-value")]));
        assert_eq!(
            pairs("ONE TWO= THREE=world", &[]),
            kv(&[("ONE", "TWO= THREE=world")])
        );
        assert_eq!(
            pairs("K   value with  spaces ", &[]),
            kv(&[("K", "value with  spaces")])
        );
    }

    // The `abc=bye def=$abc` example: every value of one line sees the variables from before it.
    #[test]
    fn documented_values_see_the_previous_environment() {
        assert_eq!(
            pairs("abc=bye def=$abc", &[("abc", "hello")]),
            kv(&[("abc", "bye"), ("def", "hello")])
        );
    }

    #[test]
    fn pairs_quote_keys_values_and_labels() {
        assert_eq!(
            pairs(
                "\"com.example.vendor\"=\"ACME Incorporated\" version=1.0",
                &[]
            ),
            kv(&[
                ("com.example.vendor", "ACME Incorporated"),
                ("version", "1.0")
            ])
        );
        assert_eq!(pairs("a='x y' b=", &[]), kv(&[("a", "x y"), ("b", "")]));
        assert_eq!(pairs("NAME", &[]), kv(&[("NAME", "")]));
        assert_eq!(pairs("a=b=c", &[]), kv(&[("a", "b=c")]));
        assert_eq!(pairs("a=\"x \\\" y\"", &[]), kv(&[("a", "x \" y")]));
    }

    #[test]
    fn pairs_errors() {
        let e = |t: &str| format!("{:#}", expand_pairs(t, &vars(&[]), '\\').err().unwrap());
        assert!(
            e("a=1 b").contains("\"b\": expected KEY=VALUE"),
            "{}",
            e("a=1 b")
        );
        assert!(e("=1").contains("empty"));
        assert!(e("").contains("expected KEY=VALUE"));
        assert!(e("a=\"open").contains("unterminated double quote"));
    }

    #[test]
    fn used_lists_every_name_set_or_not() {
        let e = expand_words(
            "$a ${b:-$c} '$d' \"$e\" \\$f ${g:+x}",
            &vars(&[("a", "1")]),
            '\\',
        )
        .unwrap();
        let used: Vec<_> = e.used.into_iter().collect();
        assert_eq!(used, ["a", "b", "c", "e", "g"]);
        let e = expand_pairs("K=$v", &vars(&[]), '\\').unwrap();
        assert_eq!(e.used.into_iter().collect::<Vec<_>>(), ["v"]);
        assert!(expand_word("plain", &vars(&[]), '\\')
            .unwrap()
            .used
            .is_empty());
    }

    #[test]
    fn errors_name_the_offending_text() {
        let e = err("x ${abc");
        assert!(e.contains("unterminated ${: ${abc"), "{e}");
        let e = err("${abc:-def");
        assert!(e.contains("unterminated ${: ${abc:-def"), "{e}");
        let e = err("${}");
        assert!(e.contains("bad substitution: ${}"), "{e}");
        let e = err("${:x}");
        assert!(e.contains("bad substitution"), "{e}");
        let e = err("${a.b}");
        assert!(e.contains("'.'") && e.contains("${a.b}"), "{e}");
        let e = err("${a#pre}");
        assert!(e.contains("unsupported '#'"), "{e}");
        let e = err("${%}");
        assert!(e.contains("bad variable name in ${%}"), "{e}");
        let e = err("'open");
        assert!(e.contains("unterminated single quote: 'open"), "{e}");
        let e = err("x \"open");
        assert!(e.contains("unterminated double quote: \"open"), "{e}");
        assert!(err("${").contains("unterminated"));
    }
}
