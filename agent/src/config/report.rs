//! The check `check-config` and `run` share: schema problems (every unknown key and
//! wrong type, [`super::collect`]), value problems ([`super::Config::problems`]) and
//! resource problems (files, environment variables and secrets the agent reads at
//! start, given by the caller so that this module stays a leaf), every one with its
//! dotted key and its line.

use std::path::Path;

use toml_edit::ImDocument;

use super::locate::{self, KeyPath};
use super::{Config, ConfigError};

/// Checks configuration text. `adjust` applies command-line overrides before the
/// value checks; `resources` returns (key, message) for what the agent could not
/// read or use. `Ok` only when there is no problem at all.
pub fn check(
    text: &str,
    path: &Path,
    adjust: impl FnOnce(&mut Config),
    resources: impl FnOnce(&Config) -> Vec<(String, String)>,
) -> Result<Config, Vec<ConfigError>> {
    let (config, schema) = super::collect::parse_all(text);
    let mut problems: Vec<ConfigError> = schema
        .into_iter()
        .map(|p| ConfigError::Parse {
            path: path.to_owned(),
            line: p.line,
            column: p.column,
            message: p.message,
        })
        .collect();
    let Some(mut config) = config else {
        return Err(problems);
    };
    adjust(&mut config);
    let original = ImDocument::parse(text.to_owned()).ok();
    let line = |key: &str| {
        original
            .as_ref()
            .and_then(|doc| locate::line_of(doc, &KeyPath::parse(key)))
    };
    for problem in config.problems(path) {
        if let ConfigError::Invalid { key, message, .. } = problem {
            problems.push(ConfigError::Invalid {
                path: path.to_owned(),
                line: line(&key),
                key,
                message,
            });
        }
    }
    // Resources only when the values are right: a bad value would make them noise.
    if problems.is_empty() {
        for (key, message) in resources(&config) {
            problems.push(ConfigError::Invalid {
                path: path.to_owned(),
                line: line(&key),
                key,
                message,
            });
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_value_and_resource_problems_all_come_with_lines() {
        let text = "max_peers = 0\nbogus = true\n[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:99999/x\"\n";
        let problems = check(text, Path::new("c.toml"), |_| {}, |_| Vec::new()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert!(
            shown[0].starts_with("c.toml:2:1:") && shown[0].contains("bogus"),
            "{}",
            shown[0]
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("c.toml:1: key `max_peers`")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("c.toml:5: key `webhooks[0].url`")),
            "{shown:#?}"
        );
        let problems = check(
            "[api]\ntoken_file = \"/nope\"\n",
            Path::new("c.toml"),
            |_| {},
            |_| vec![("api.token_file".into(), "cannot be read".into())],
        )
        .unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "c.toml:2: key `api.token_file`: cannot be read"
        );
    }
}
