//! Every kind of secret configured at once (API and metrics tokens, a webhook URL with
//! `user:password@` and a `?token=` query, an inline `authorization`, signing secrets
//! from a file and inline, a custom header value) and the agent logging at `trace`:
//! none of the values appears in the log, `/metrics`, any API answer, the CLI's output
//! or a webhook body, while the receiver still gets each credential where it belongs.

use std::time::Duration;

use base64::Engine as _;
use wgpulse_tests::agent::{binary, http, AgentProcess};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::receiver::Receiver;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

/// A random value of 32 hex digits with a recognisable prefix.
fn secret(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!(
        "{prefix}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn no_secret_reaches_the_trace_log_metrics_api_cli_or_a_webhook_body() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    let dir = std::env::temp_dir().join(unique_name("wgps"));
    std::fs::create_dir_all(&dir).unwrap();

    let api_token = secret("apitok");
    let metrics_token = secret("mettok");
    let password = secret("pw");
    let query_token = secret("qtok");
    let header_value = secret("hdr");
    let authorization = format!("Bearer {}", secret("auth"));
    let raw_signing = secret("rawsig");
    let whsec_key: [u8; 24] = rand::random();
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(whsec_key)
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    std::fs::write(dir.join("api"), format!("{api_token}\n")).unwrap();
    std::fs::write(dir.join("metrics"), format!("{metrics_token}\n")).unwrap();
    std::fs::write(dir.join("whsec"), format!("{whsec}\n")).unwrap();
    let port = receiver.addr().port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = {state:?}
interfaces = [{iface:?}]
devices = [{dev:?}]
log_level = "trace"
drain_interval = "200ms"
refresh_interval = "500ms"
[metrics]
token_file = {metrics:?}
[api]
token_file = {api:?}
[[webhooks]]
name = "portal"
url = "http://alice:{password}@127.0.0.1:{port}/hook?token={query_token}"
events = ["peer_metric.*"]
signing_secret_file = {whsec_file:?}
[webhooks.headers]
X-Api-Key = "{header_value}"
[[webhooks]]
name = "batched"
url = "http://127.0.0.1:{port}/batch"
format = "batch"
events = ["peer_metric.*"]
authorization = "{authorization}"
signing_secret = "{raw_signing}"
[webhooks.batch]
max_wait = "100ms"
"#,
            state = dir.display().to_string(),
            iface = pair.link.b.name,
            dev = pair.wg_b.name,
            metrics = dir.join("metrics").display().to_string(),
            api = dir.join("api").display().to_string(),
            whsec_file = dir.join("whsec").display().to_string(),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("serving /metrics", Duration::from_secs(30));
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 2);

    // Both webhooks deliver the connect.
    wait_for("both webhooks to deliver", Duration::from_secs(20), || {
        let requests = receiver.requests();
        requests.iter().any(|r| r.path.starts_with("/hook"))
            && requests.iter().any(|r| r.path == "/batch")
    });
    let base = "http://127.0.0.1:9586";
    let mut answers = Vec::new();
    for (method, route) in [
        ("GET", "/api/v1/peers"),
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/portal/deliveries"),
        ("GET", "/api/v1/webhooks/batched/deliveries"),
        ("GET", "/api/v1/webhooks/portal/dead-letters"),
        ("POST", "/api/v1/webhooks/portal/test"),
        ("POST", "/api/v1/webhooks/batched/test"),
        ("GET", "/readyz"),
    ] {
        let (status, body) = http(&pair.b, method, &format!("{base}{route}"), Some(&api_token));
        assert_eq!(status, 200, "{route}: {body}");
        answers.push(body);
    }
    let (status, exposition) = http(
        &pair.b,
        "GET",
        &format!("{base}/metrics"),
        Some(&metrics_token),
    );
    assert_eq!(status, 200);
    answers.push(exposition);
    for args in [
        vec!["peers"],
        vec!["peers", "--json"],
        vec!["webhook", "list"],
        vec!["webhook", "deliveries", "portal"],
        vec!["webhook", "test", "batched"],
    ] {
        let binary = binary();
        let mut command = vec![binary.as_str()];
        command.extend(&args);
        command.extend(["--config", config.to_str().unwrap()]);
        let out = pair.b.try_run(&command);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
        answers.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }

    // Each credential went where it belongs.
    let requests = receiver.requests();
    let portal: Vec<_> = requests
        .iter()
        .filter(|r| r.path.starts_with("/hook"))
        .collect();
    assert!(portal
        .iter()
        .all(|r| r.path == format!("/hook?token={query_token}")));
    assert!(portal
        .iter()
        .all(|r| r.header("authorization") == Some(format!("Basic {basic}").as_str())));
    assert!(portal
        .iter()
        .all(|r| r.header("x-api-key") == Some(header_value.as_str())));
    let batched: Vec<_> = requests.iter().filter(|r| r.path == "/batch").collect();
    assert!(batched
        .iter()
        .all(|r| r.header("authorization") == Some(authorization.as_str())));

    // And nowhere else.
    let log = agent.log();
    assert!(log.contains("TRACE"), "the log is at trace level");
    let private_a = pair.wg_a.keys.private_key().to_owned();
    let private_b = pair.wg_b.keys.private_key().to_owned();
    let secrets: Vec<(&str, &str)> = vec![
        ("the API token", &api_token),
        ("the metrics token", &metrics_token),
        ("the URL's password", &password),
        ("the URL's query token", &query_token),
        ("the custom header value", &header_value),
        ("the authorization value", &authorization),
        ("the raw signing secret", &raw_signing),
        ("the whsec signing secret", &whsec),
        ("the Basic credentials", &basic),
        ("peer A's private key", &private_a),
        ("peer B's private key", &private_b),
    ];
    let bodies: Vec<String> = requests
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for (what, value) in &secrets {
        assert!(!log.contains(value), "{what} is in the agent's log");
        for answer in &answers {
            assert!(!answer.contains(value), "{what} is in an answer: {answer}");
        }
        for body in &bodies {
            assert!(!body.contains(value), "{what} is in a webhook body: {body}");
        }
    }
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
