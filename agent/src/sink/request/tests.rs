use super::*;

fn webhook(toml_text: &str) -> WebhookConfig {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn url_userinfo_becomes_basic_auth_and_leaves_the_url() {
    let config =
        webhook("name = \"a\"\nurl = \"http://alice:s%3Acret@127.0.0.1:18090/hook?token=q1\"\n");
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    let target = Target::new(&config).unwrap();
    assert_eq!(
        target.url.to_string(),
        "http://127.0.0.1:18090/hook?token=q1"
    );
    let request = target.request("id", Encoded::default(), SystemTime::now());
    assert_eq!(
        request.headers()[AUTHORIZATION],
        // base64("alice:s:cret")
        "Basic YWxpY2U6czpjcmV0"
    );
    assert!(request.headers()[AUTHORIZATION].is_sensitive());
    let debug = format!("{target:?}");
    assert!(
        !debug.contains("cret") && !debug.contains("q1") && !debug.contains("alice"),
        "{debug}"
    );
}

#[test]
fn userinfo_and_an_authorization_key_together_are_a_config_error() {
    let config = webhook(
        "name = \"a\"\nurl = \"http://alice:secret@h/x\"\nauthorization = \"Bearer 0123456789abcdef\"\n",
    );
    let problems = config.problems();
    assert!(
        problems
            .iter()
            .any(|(k, m)| k == "url" && m.contains("use one")),
        "{problems:?}"
    );
    assert!(!format!("{problems:?}").contains("secret"));
}

#[test]
fn invalid_ports_framing_headers_and_crlf_values_are_config_errors() {
    let config = webhook("name = \"a\"\nurl = \"http://127.0.0.1:99999/x\"\n");
    let problems = config.problems();
    assert!(
        problems
            .iter()
            .any(|(k, m)| k == "url" && m.contains("port")),
        "{problems:?}"
    );
    for header in [
        "Host",
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Authorization",
    ] {
        let config = webhook(&format!(
            "name = \"a\"\nurl = \"http://h/x\"\n[headers]\n{header} = \"5\"\n"
        ));
        let problems = config.problems();
        assert!(
            problems
                .iter()
                .any(|(k, _)| k == &format!("headers.{header}")),
            "{header}: {problems:?}"
        );
    }
    let config = webhook(
        "name = \"a\"\nurl = \"http://h/x\"\n[headers]\nX-Tenant = \"blue\\r\\nX-Evil: 1\"\n",
    );
    assert!(config
        .problems()
        .iter()
        .any(|(k, _)| k == "headers.X-Tenant"));
    let config = webhook("name = \"a\"\nurl = \"http://h/x#frag\"\n");
    assert!(config.problems().iter().any(|(k, _)| k == "url"));
}

#[test]
fn a_placeholder_authorization_stops_the_webhook() {
    let config =
        webhook("name = \"a\"\nurl = \"http://h/x\"\nauthorization = \"Bearer change-me\"\n");
    let err = Target::new(&config).unwrap_err().to_string();
    assert!(
        err.contains("placeholder") && err.contains("authorization"),
        "{err}"
    );
    assert!(!err.contains("Bearer"), "{err}");
}
