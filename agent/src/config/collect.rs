//! Every schema problem of a configuration file at once: serde stops at the first
//! unknown key or wrong type, so each offending key is located (`toml_edit` spans),
//! reported with its line, removed, and the file parsed again — up to
//! [`MAX_PROBLEMS`] — until what is left parses. Values that parse still count, so
//! the value checks and the resource checks that follow see the rest of the file.

use toml_edit::ImDocument;

use super::locate::{self, KeyPath, Segment};
use super::Config;

/// Most schema problems reported for one file.
pub const MAX_PROBLEMS: usize = 100;

/// A schema problem: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The dotted key, when the problem is at one.
    pub key: Option<String>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Elements removed from arrays of tables, to name later problems by their index in
/// the original file.
#[derive(Default)]
struct Removed(Vec<(KeyPath, usize)>);

impl Removed {
    /// The original path of a path in the current (trimmed) document.
    fn original(&self, path: &KeyPath) -> KeyPath {
        let mut out = Vec::with_capacity(path.0.len());
        for segment in &path.0 {
            match segment {
                Segment::Index(current) => {
                    let prefix = KeyPath(out.clone());
                    let mut gone: Vec<usize> = self
                        .0
                        .iter()
                        .filter(|(array, _)| *array == prefix)
                        .map(|(_, index)| *index)
                        .collect();
                    gone.sort_unstable();
                    let original = (0..)
                        .filter(|i| !gone.contains(i))
                        .nth(*current)
                        .unwrap_or(*current);
                    out.push(Segment::Index(original));
                }
                key => out.push(key.clone()),
            }
        }
        KeyPath(out)
    }
}

/// Parses `text`, collecting every schema problem. The config is `None` only when
/// the TOML itself does not parse (or the problems could not be located).
pub fn parse_all(text: &str) -> (Option<Config>, Vec<SchemaProblem>) {
    let original = match ImDocument::parse(text.to_owned()) {
        Ok(doc) => doc,
        Err(err) => {
            let (line, column) = err
                .span()
                .map(|s| locate::line_column(text, s.start))
                .unwrap_or((1, 1));
            return (
                None,
                vec![SchemaProblem {
                    key: None,
                    line,
                    column,
                    message: err.message().trim().to_owned(),
                }],
            );
        }
    };
    let mut current = text.to_owned();
    let mut removed = Removed::default();
    let mut problems = Vec::new();
    while problems.len() < MAX_PROBLEMS {
        let err = match toml::from_str::<Config>(&current) {
            Ok(config) => return (Some(config), problems),
            Err(err) => err,
        };
        let located = err.span().and_then(|span| {
            let doc = ImDocument::parse(current.clone()).ok()?;
            let path = locate::path_at(&doc, span.start)?;
            // A wrong value is shown at the value, an unknown key at the key.
            let at_value = locate::value_offset(&doc, &path).is_some_and(|v| span.start >= v);
            Some((path, span.start, at_value))
        });
        let Some((path, offset, at_value)) = located else {
            let (line, column) = err
                .span()
                .map(|s| locate::line_column(&current, s.start))
                .unwrap_or((1, 1));
            problems.push(SchemaProblem {
                key: None,
                line,
                column,
                message: err.message().to_owned(),
            });
            return (None, problems);
        };
        let original_path = removed.original(&path);
        let value = at_value
            .then(|| locate::value_offset(&original, &original_path))
            .flatten()
            .map(|v| locate::line_column(text, v));
        let (line, column) = value
            .or_else(|| locate::position_of(&original, &original_path))
            .unwrap_or_else(|| locate::line_column(&current, offset));
        let key = original_path.to_string();
        let message = err.message().to_owned();
        problems.push(SchemaProblem {
            message: if message.contains(&format!("`{key}`")) {
                message
            } else {
                format!("key `{key}`: {message}")
            },
            key: Some(key),
            line,
            column,
        });
        let mut doc: toml_edit::DocumentMut = match current.parse() {
            Ok(doc) => doc,
            Err(_) => return (None, problems),
        };
        if !locate::remove(&mut doc, &path) {
            return (None, problems);
        }
        if let Some((Segment::Index(index), array)) = original_path.0.split_last() {
            removed.0.push((KeyPath(array.to_vec()), *index));
        }
        current = doc.to_string();
    }
    (None, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_problems_are_three_errors_each_with_its_line() {
        let text = "max_peers = \"many\"\ndrain_intervall = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n[[webhooks]]\nurl = \"http://x/\"\n[[webhooks]]\nname = \"b\"\nurl = \"http://y/\"\nformat = \"zip\"\n";
        let (config, problems) = parse_all(text);
        let found: Vec<(Option<&str>, usize)> = problems
            .iter()
            .map(|p| (p.key.as_deref(), p.line))
            .collect();
        assert_eq!(
            found,
            [
                (Some("max_peers"), 1),
                (Some("drain_intervall"), 2),
                (Some("metrics.bogus"), 5),
                (Some("webhooks[0]"), 6),
                (Some("webhooks[1].format"), 11),
            ],
            "{problems:#?}"
        );
        assert!(
            problems[3].message.contains("name"),
            "{}",
            problems[3].message
        );
        // What parsed still counts.
        let config = config.expect("the rest parses");
        assert_eq!(config.metrics.listen, "127.0.0.1:1");
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.webhooks[0].name, "b");
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_its_line() {
        let (config, problems) = parse_all("max_peers = 1\n[metrics\n");
        assert!(config.is_none());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
    }
}
