//! What `run` reads at start before it touches the kernel — token files, the
//! listener's certificate, the peers file, each webhook's secrets (files, environment
//! variables, their strength) and CA file — checked without starting anything, so
//! that `check-config` says "ok" only where `run` would start, and `run` names every
//! such problem at once instead of the first. Each problem is (dotted key, message).

use crate::config::Config;

/// Every resource problem of `config`.
pub fn resource_problems(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (key, path) in [
        ("api.token_file", &config.api.token_file),
        ("metrics.token_file", &config.metrics.token_file),
    ] {
        if let Some(path) = path {
            if let Err(err) = crate::server::auth::Token::from_file(key, path) {
                problems.push((key.to_owned(), err.to_string()));
            }
        }
    }
    if let Err(err) = crate::server::tls::acceptor(&config.metrics) {
        let key = match &err {
            crate::server::ServerError::File { what, .. } => (*what).to_owned(),
            _ => "metrics.tls_cert".to_owned(),
        };
        problems.push((key, err.to_string()));
    }
    if let Some(path) = &config.peers_file {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))
            .and_then(|text| {
                crate::peers::names::parse(&text, path)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if let Err(message) = parsed {
            problems.push(("peers_file".into(), message));
        }
    }
    for (i, webhook) in config.webhooks.iter().enumerate() {
        for (key, message) in crate::sink::request::resource_problems(webhook) {
            problems.push((format!("webhooks[{i}].{key}"), message));
        }
    }
    for (i, nats) in config.nats.iter().enumerate() {
        for (key, message) in crate::sink::nats::connect::resource_problems(nats) {
            problems.push((format!("nats[{i}].{key}"), message));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_unreadable_or_weak_resource_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let empty = write("empty", "\n");
        let placeholder = write("placeholder", "change-me-change-me\n");
        let peers = write("peers.toml", "[peers.\"not-a-key\"]\nname = \"x\"\n");
        let text = format!(
            r#"peers_file = {peers:?}
[api]
token_file = {empty:?}
[metrics]
token_file = "/nonexistent/token"
tls_cert = "/nonexistent/cert.pem"
tls_key = "/nonexistent/key.pem"
[[webhooks]]
name = "a"
url = "http://x/"
authorization_file = "/nonexistent/auth"
signing_secret = "whsec_!!!"
[[webhooks]]
name = "b"
url = "http://y/"
authorization_env = "WGPULSE_TEST_UNSET_VARIABLE"
signing_secret_file = {placeholder:?}
ca_file = {empty:?}
"#
        );
        let problems =
            crate::config::report::check(&text, Path::new("c.toml"), |_| {}, resource_problems)
                .unwrap_err();
        let keys: Vec<String> = problems
            .iter()
            .map(|p| match p {
                crate::config::ConfigError::Invalid { key, line, .. } => {
                    assert!(line.is_some(), "{p}");
                    key.clone()
                }
                other => panic!("{other}"),
            })
            .collect();
        for wanted in [
            "api.token_file",
            "metrics.token_file",
            "metrics.tls_cert",
            "peers_file",
            "webhooks[0].authorization_file",
            "webhooks[0].signing_secret",
            "webhooks[1].authorization_env",
            "webhooks[1].signing_secret_file",
            "webhooks[1].ca_file",
        ] {
            assert!(
                keys.iter().any(|k| k == wanted),
                "{wanted} missing in {keys:?}"
            );
        }
        let shown: String = problems.iter().map(|p| format!("{p}\n")).collect();
        assert!(!shown.contains("change-me-change-me"), "{shown}");
    }
}
