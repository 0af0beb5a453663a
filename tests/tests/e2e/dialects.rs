//! Every dialect against a receiver written from its own system's documentation
//! (`tests/receivers/dialects.py`): a real connect, handshake, peer update, alert,
//! disconnect and delete from wireguard-go traffic reach every receiver, every request
//! is accepted (2xx), and the values the receivers read equal what `wg show` and the
//! agent's API say.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::process::{wait_for, ChildGuard};
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

const AGENT: &str = "http://127.0.0.1:9586";

/// The requests a receiver route recorded.
#[derive(Debug, Clone)]
struct Record {
    route: String,
    status: u16,
    verdict: String,
    headers: BTreeMap<String, String>,
    body: String,
}

fn records(log: &std::path::Path) -> Vec<Record> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The receiver may be writing a line right now: only whole lines count.
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    whole
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Record {
                route: v["route"].as_str().unwrap().to_owned(),
                status: v["status"].as_u64().unwrap() as u16,
                verdict: v["verdict"].as_str().unwrap().to_owned(),
                headers: v["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned()))
                    .collect(),
                body: v["body"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn every_dialect_is_accepted_by_a_receiver_written_from_its_docs() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let dir = std::env::temp_dir().join(unique_name("wgpdl"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("received.jsonl");
    let secrets = serde_json::json!({
        "wg-portal": "Basic dXNlcm5hbWU6cGFzc3dvcmQ=",
        "defguard": "Bearer defguard-token-0123456789",
        "vpn-enterprise": "vpn-enterprise-webhook-secret-0123",
        "standard-webhooks": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    });
    let port = 18600 + (std::process::id() % 400) as u16;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("receivers/dialects.py");
    let _receivers = ChildGuard::new(
        pair.b
            .command(&[
                "python3",
                script.to_str().unwrap(),
                &port.to_string(),
                log.to_str().unwrap(),
                &secrets.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        "dialect receivers",
    );
    let url = |route: &str| format!("http://127.0.0.1:{port}/{route}");
    let all = "events = [\"*\", \"peer_metric.handshake\"]";
    // The chat lines name the peer from the peers file.
    let peers_file = dir.join("peers.toml");
    std::fs::write(
        &peers_file,
        format!(
            "[peers.{:?}]\nname = \"alice-laptop\"\n",
            pair.wg_a.keys.public
        ),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = {state:?}
peers_file = {peers:?}
interfaces = [{iface:?}]
devices = [{dev:?}]
drain_interval = "200ms"
refresh_interval = "500ms"
disconnect_after = "8s"
[alerts]
window = "2s"
invalid_flood_per_second = 5
[[webhooks]]
name = "wg-portal"
dialect = "wg-portal"
url = "{wgp}"
authorization = "Basic dXNlcm5hbWU6cGFzc3dvcmQ="
{all}
[[webhooks]]
name = "wg-portal-v1"
dialect = "wg-portal-v1"
url = "{wgp1}"
{all}
[[webhooks]]
name = "defguard"
dialect = "defguard"
url = "{defguard}"
authorization = "Bearer defguard-token-0123456789"
{all}
[[webhooks]]
name = "procustodibus"
dialect = "procustodibus"
url = "{pc}"
{all}
[webhooks.extra_fields]
site = "berlin"
[[webhooks]]
name = "vpn-enterprise"
dialect = "vpn-enterprise"
url = "{vpn}"
signing_secret = "vpn-enterprise-webhook-secret-0123"
{all}
[[webhooks]]
name = "standard-webhooks"
dialect = "standard-webhooks"
url = "{sw}"
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
{all}
[[webhooks]]
name = "slack"
dialect = "slack"
url = "{slack}"
[[webhooks]]
name = "discord"
dialect = "discord"
format = "batch"
url = "{discord}"
[[webhooks]]
name = "ntfy"
dialect = "template"
url = "{ntfy}"
template = "{{{{ text }}}} [{{{{ node }}}}]"
template_content_type = "text/plain; charset=utf-8"
"#,
            state = dir.display().to_string(),
            peers = peers_file.display().to_string(),
            iface = pair.link.b.name,
            dev = pair.wg_b.name,
            wgp = url("wg-portal"),
            wgp1 = url("wg-portal-v1"),
            defguard = url("defguard"),
            pc = url("procustodibus"),
            vpn = url("vpn-enterprise"),
            sw = url("standard-webhooks"),
            slack = url("slack"),
            discord = url("discord"),
            ntfy = url("ntfy"),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("serving /metrics", Duration::from_secs(30));
    // Attached and devices read: the datapath sees the handshake itself.
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        http(&pair.b, "GET", &format!("{AGENT}/readyz"), None).0 == 200
    });
    let peer = pair.wg_a.keys.public.clone();

    // Connect and the handshake feed.
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 3);
    // A peer update: B gives A one more allowed IP. WireGuard's view before it is
    // the oracle for the old value.
    let allowed_before = pair.wg_b.peer(&peer).allowed_ips.join(",");
    let allowed = format!("{}/32,10.254.254.1/32", pair.tunnel_addr_a(false));
    pair.wg_b.set_peer(&peer, None, &allowed);
    // An alert: garbage at B's WireGuard port from A's namespace.
    let garbage = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(60): s.sendto(b'not wireguard', ('{}', {}))",
        pair.link.b.addr(false),
        pair.wg_b.port
    );
    pair.a.run(&["python3", "-c", &garbage]);
    let seen = |route: &str, what: &str| {
        records(&log)
            .iter()
            .any(|r| r.route == format!("/{route}") && r.verdict.contains(what))
    };
    wait_for(
        "the alert at the defguard receiver",
        Duration::from_secs(30),
        || seen("defguard", "alert_invalid_flood"),
    );
    // Silence: the disconnect after 8 s; the counters are quiet now.
    wait_for("the disconnect", Duration::from_secs(40), || {
        seen("vpn-enterprise", "vpn.disconnected")
    });
    let dump = pair.wg_b.peer(&peer);
    // Removal.
    pair.wg_b.remove_peer(&peer);
    // Each webhook is a lane of its own: wait for the last event every route below
    // asserts (a CI run read the log while the Discord disconnect was in flight).
    wait_for("the delete everywhere", Duration::from_secs(30), || {
        seen("defguard", "peer_deleted")
            && seen("vpn-enterprise", "vpn.peer.deleted")
            && seen("wg-portal", "peer.delete")
            && seen("standard-webhooks", "peer.delete")
            && seen("discord", "disconnected")
            && seen("ntfy", "was removed from")
    });
    let records = records(&log);

    // Every request of every dialect was accepted.
    for record in &records {
        assert!(
            (200..300).contains(&record.status),
            "{} refused a request ({} {}): {}",
            record.route,
            record.status,
            record.verdict,
            record.body
        );
    }
    let (_, body) = http(&pair.b, "GET", &format!("{AGENT}/api/v1/webhooks"), None);
    for webhook in json(&body)["webhooks"].as_array().unwrap() {
        assert_eq!(webhook["failed"], 0, "{webhook}");
        assert_eq!(webhook["dead"], 0, "{webhook}");
        assert!(webhook["delivered"].as_u64().unwrap() >= 1, "{webhook}");
    }
    let route = |name: &str| -> Vec<&Record> {
        records
            .iter()
            .filter(|r| r.route == format!("/{name}"))
            .collect()
    };

    // wg-portal v2: the shell; the disconnect carries wg show's counters.
    let wg_portal: Vec<Value> = route("wg-portal").iter().map(|r| json(&r.body)).collect();
    let disconnect = wg_portal
        .iter()
        .find(|e| e["event"] == "disconnect")
        .expect("a disconnect");
    assert_eq!(disconnect["identifier"], peer.as_str());
    assert_eq!(
        disconnect["payload"]["Status"]["BytesReceived"],
        dump.rx_bytes
    );
    assert_eq!(
        disconnect["payload"]["Status"]["BytesTransmitted"],
        dump.tx_bytes
    );
    let update = wg_portal
        .iter()
        .find(|e| e["event"] == "update")
        .expect("an update");
    assert_eq!(update["payload"]["AllowedIPsStr"], allowed.as_str());
    // v1: the connect on entity peer.
    let v1: Vec<Value> = route("wg-portal-v1")
        .iter()
        .map(|r| json(&r.body))
        .collect();
    let connect = v1
        .iter()
        .find(|e| e["event"] == "connect")
        .expect("a v1 connect");
    assert_eq!(connect["payload"]["PeerId"], peer.as_str());
    assert_eq!(
        connect["payload"]["Endpoint"],
        pair.endpoint_a().to_string()
    );
    // defguard: the triggers and the entity.
    let triggers: Vec<&str> = route("defguard")
        .iter()
        .map(|r| r.verdict.as_str())
        .collect();
    for trigger in [
        "peer_connected",
        "peer_handshake",
        "peer_modified",
        "alert_invalid_flood",
        "peer_disconnected",
        "peer_deleted",
    ] {
        assert!(triggers.contains(&trigger), "{trigger} not in {triggers:?}");
    }
    let disconnected = route("defguard")
        .into_iter()
        .find(|r| r.verdict == "peer_disconnected")
        .unwrap();
    let disconnected = json(&disconnected.body);
    assert_eq!(disconnected["public_key"], peer.as_str());
    assert_eq!(disconnected["rx_bytes"], dump.rx_bytes);
    // Pro Custodibus: endpoint stats from the handshake, the alert, the changes.
    let resources: Vec<Value> = route("procustodibus")
        .iter()
        .flat_map(|r| json(&r.body).as_array().unwrap().clone())
        .collect();
    let stats = resources
        .iter()
        .find(|r| r["type"] == "endpoint_stats")
        .expect("endpoint_stats");
    assert_eq!(
        stats["attributes"]["ip"],
        pair.endpoint_a().ip().to_string()
    );
    assert_eq!(stats["attributes"]["port"], pair.endpoint_a().port());
    assert_eq!(
        stats["relationships"]["endpoint"]["data"][0]["id"],
        peer.as_str()
    );
    assert_eq!(stats["site"], "berlin", "extra_fields");
    let alert = resources
        .iter()
        .find(|r| r["type"] == "alerts")
        .expect("alerts");
    assert_eq!(alert["attributes"]["type"], "invalid_flood");
    assert_eq!(alert["attributes"]["danger"], 5);
    let allowed_change = resources
        .iter()
        .find(|r| r["type"] == "log_changes" && r["attributes"]["field"] == "allowed_ips")
        .expect("the allowed IPs change");
    assert_eq!(allowed_change["attributes"]["new_value"], allowed.as_str());
    assert_eq!(
        allowed_change["attributes"]["old_value"],
        allowed_before.as_str()
    );
    // VPN Enterprise: the signature verified by the doc's own function; the types.
    let types: Vec<&str> = route("vpn-enterprise")
        .iter()
        .map(|r| r.verdict.as_str())
        .collect();
    for kind in [
        "vpn.connected",
        "vpn.handshake",
        "vpn.peer.updated",
        "vpn.alert.invalid_flood",
        "vpn.disconnected",
        "vpn.peer.deleted",
    ] {
        assert!(types.contains(&kind), "{kind} not in {types:?}");
    }
    let connected = route("vpn-enterprise")
        .into_iter()
        .find(|r| r.verdict == "vpn.connected")
        .unwrap();
    assert!(connected.headers["x-vpn-signature"].starts_with("sha256="));
    assert_eq!(json(&connected.body)["data"]["identifier"], peer.as_str());
    // Standard Webhooks: verified by the reference library.
    let types: Vec<&str> = route("standard-webhooks")
        .iter()
        .map(|r| r.verdict.as_str())
        .collect();
    assert!(
        types.contains(&"peer_metric.connect") && types.contains(&"peer.delete"),
        "{types:?}"
    );
    // Chat: readable lines naming the endpoint.
    let short = format!("{}…", &peer[..8]);
    assert!(route("slack").iter().any(|r| r.verdict
        == format!(
            "peer alice-laptop ({short}) connected from {} on {}",
            pair.endpoint_a(),
            pair.wg_b.name
        )));
    assert!(route("discord")
        .iter()
        .any(|r| r.verdict.contains("disconnected")));
    assert!(route("ntfy")
        .iter()
        .any(|r| r.verdict.contains("was removed from") && r.verdict.ends_with("]")));
    // The test event goes out in each webhook's own dialect.
    let (status, body) = http(
        &pair.b,
        "POST",
        &format!("{AGENT}/api/v1/webhooks/vpn-enterprise/test"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], 200);
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `wgpulse check-config` on `text`; its stderr, after asserting it failed.
fn check_config_fails(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(wgpulse_tests::agent::binary())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{name} must fail: {stderr}");
    stderr
}

#[test]
fn dialect_mistakes_are_config_errors_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[[webhooks]]\nname = \"chat\"\nurl = \"http://127.0.0.1:9/x\"\n";
    let file = dir.path().join("body.j2");
    std::fs::write(&file, "{{ text }}\n{{ payload.Status.Endpoint }}\n").unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown-dialect",
            format!("{head}dialect = \"zapier\"\n"),
            vec!["4:11", "webhooks[0].dialect", "zapier", "vpn-enterprise"],
        ),
        (
            // Strict: a name some samples lack fails at start, on the
            // template's own line 2, with the webhook's name.
            "template-undefined",
            format!("{head}dialect = \"template\"\ntemplate = \"\"\"\n{{{{ text }}}}\n{{{{ payload.Status.Endpoint }}}}\n\"\"\"\n"),
            vec!["5: key `webhooks[0].template`", "webhook \"chat\"", "template line 2", "rendering the sample"],
        ),
        (
            "template-syntax",
            format!("{head}dialect = \"template\"\ntemplate = \"ok {{% if %}}\"\n"),
            vec!["webhooks[0].template", "template line 1", "syntax error"],
        ),
        (
            "template-file",
            format!("{head}dialect = \"template\"\ntemplate_file = {:?}\n", file.display().to_string()),
            vec!["5: key `webhooks[0].template_file`", "template line 2"],
        ),
        (
            "template-without-dialect",
            format!("{head}template = \"{{{{ text }}}}\"\n"),
            vec!["webhooks[0].template", "dialect = \"template\""],
        ),
        (
            "header-not-http",
            format!("{head}signing_secret = \"a-signing-secret-0123456789\"\nsignature_header = \"X Sig\"\n"),
            vec!["5: key `webhooks[0].signature_header`", "not a valid HTTP header name"],
        ),
        (
            "header-reserved",
            format!("{head}signing_secret = \"a-signing-secret-0123456789\"\nsignature_header = \"Content-Type\"\n"),
            vec!["webhooks[0].signature_header", "content type"],
        ),
        (
            "header-is-the-event-header",
            format!("{head}dialect = \"defguard\"\nsigning_secret = \"a-signing-secret-0123456789\"\nsignature_header = \"x-defguard-event\"\n"),
            vec!["6: key `webhooks[0].signature_header`", "event name"],
        ),
        (
            "vpn-enterprise-without-secret",
            format!("{head}dialect = \"vpn-enterprise\"\n"),
            vec!["webhooks[0].signing_secret", "vpn-enterprise dialect"],
        ),
        (
            "standard-webhooks-without-secret",
            format!("{head}dialect = \"standard-webhooks\"\n"),
            vec!["webhooks[0].signing_secret", "standard-webhooks dialect"],
        ),
    ];
    for (name, text, wanted) in &cases {
        let stderr = check_config_fails(dir.path(), name, text);
        for want in wanted {
            assert!(stderr.contains(want), "{name}: {want:?} not in {stderr}");
        }
    }
    // The same template restricted to the events that have the field passes.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("{head}dialect = \"template\"\nevents = [\"peer_metric.connect\"]\ntemplate_file = {:?}\n", file.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new(wgpulse_tests::agent::binary())
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
