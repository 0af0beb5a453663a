//! /metrics, the local API and the command line against a running `wgpulse run` next
//! to wireguard-go: a real Prometheus scrapes it and its series equal `wg show` and the
//! agent's own table; `promtool check metrics` accepts the exposition; every API route
//! with and without its token; `wgpulse peers` and `wgpulse check-config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::process::{wait_for, ChildGuard};
use wgpulse_tests::receiver::{Receiver, Reply};
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

const AGENT: &str = "127.0.0.1:9586";

fn binary() -> String {
    env!("CARGO_MANIFEST_DIR").to_owned() + "/../target/debug/wgpulse"
}

/// Writes a config for an agent in B's namespace; returns its path and state dir.
fn config(pair: &WgPair, extra: &str) -> (PathBuf, PathBuf) {
    let state = std::env::temp_dir().join(unique_name("wgpm"));
    std::fs::create_dir_all(&state).unwrap();
    let path = state.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {state:?}\ninterfaces = [{iface:?}]\ndevices = [{dev:?}]\nrefresh_interval = \"500ms\"\ndrain_interval = \"200ms\"\n{extra}",
            state = state.display().to_string(),
            iface = pair.link.b.name,
            dev = pair.wg_b.name,
        ),
    )
    .unwrap();
    (path, state)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Queries Prometheus (in B's namespace) for one instant value.
fn query(pair: &WgPair, prometheus: &str, promql: &str) -> Option<f64> {
    let url = format!("http://{prometheus}/api/v1/query?query={}", percent(promql));
    let (status, body) = http(&pair.b, "GET", &url, None);
    if status == 0 || status == 503 {
        // Prometheus is not listening yet, or not ready (it answers 503 while it
        // starts).
        return None;
    }
    assert_eq!(status, 200, "{body}");
    let value = json(&body);
    let result = value["data"]["result"].as_array()?.first()?.clone();
    result["value"][1].as_str()?.parse().ok()
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_series_equal_to_wg_show_and_the_table() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let (config, state) = config(&pair, "");
    let agent = AgentProcess::start(&pair.b, &config);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        agent.count("serving /metrics") > 0
            && http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
    });
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 5);

    // A real Prometheus scraping every second, on B's loopback.
    let prom_dir = state.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wgpulse\n    static_configs:\n      - targets: ['{AGENT}']\n"),
    )
    .unwrap();
    let prometheus = "127.0.0.1:9590";
    let _prom = ChildGuard::new(
        pair.b
            .command(&[
                "prometheus",
                &format!("--config.file={}", prom_config.display()),
                &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                &format!("--web.listen-address={prometheus}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting prometheus"),
        "prometheus",
    );

    let peer = pair.wg_a.keys.public.clone();
    let selector = format!("{{public_key=\"{peer}\"}}");
    let mut last = (0.0, 0.0);
    wait_for(
        "Prometheus to hold wg show's values",
        Duration::from_secs(40),
        || {
            let dump = pair.wg_b.peer(&peer);
            let rx = query(
                &pair,
                prometheus,
                &format!("wireguard_peer_receive_bytes_total{selector}"),
            );
            let tx = query(
                &pair,
                prometheus,
                &format!("wireguard_peer_transmit_bytes_total{selector}"),
            );
            last = (rx.unwrap_or(-1.0), tx.unwrap_or(-1.0));
            last == (dump.rx_bytes as f64, dump.tx_bytes as f64)
        },
    );
    let dump = pair.wg_b.peer(&peer);
    assert_eq!(
        query(
            &pair,
            prometheus,
            &format!("wireguard_peer_last_handshake_seconds{selector}")
        ),
        Some(dump.latest_handshake as f64)
    );
    assert_eq!(
        query(
            &pair,
            prometheus,
            &format!("wireguard_peer_connected{selector}")
        ),
        Some(1.0)
    );
    let (_, body) = http(
        &pair.b,
        "GET",
        &format!("http://{AGENT}/api/v1/peers"),
        None,
    );
    let table = json(&body);
    let row = &table["peers"][0];
    assert_eq!(row["public_key"], peer.as_str());
    assert_eq!(
        query(
            &pair,
            prometheus,
            &format!("wireguard_peer_receive_packets_total{selector}")
        ),
        row["wire"]["rx_packets"].as_f64()
    );
    assert_eq!(
        query(
            &pair,
            prometheus,
            &format!("wireguard_peer_handshakes_completed_total{selector}")
        ),
        Some(1.0)
    );
    assert_eq!(
        query(
            &pair,
            prometheus,
            &format!(
                "count(wireguard_peer_info{{public_key=\"{peer}\",endpoint=\"{}\"}})",
                pair.endpoint_a()
            )
        ),
        Some(1.0)
    );

    // The agent's own timings: a drain and a device read took some time.
    for gauge in [
        "wgpulse_drain_duration_seconds",
        "wgpulse_device_read_duration_seconds",
        "wgpulse_device_read_cpu_seconds",
    ] {
        let seconds = query(&pair, prometheus, gauge).expect(gauge);
        assert!(seconds > 0.0 && seconds < 5.0, "{gauge} = {seconds}");
    }

    // promtool accepts the exposition.
    let (_, exposition) = http(&pair.b, "GET", &format!("http://{AGENT}/metrics"), None);
    let file = state.join("exposition.txt");
    std::fs::write(&file, &exposition).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&state);
}

/// Runs a PromQL query against Prometheus in B's namespace; the JSON answer.
fn query_raw(pair: &WgPair, prometheus: &str, promql: &str) -> serde_json::Value {
    let url = format!("http://{prometheus}/api/v1/query?query={}", percent(promql));
    let (status, body) = http(&pair.b, "GET", &url, None);
    assert_eq!(status, 200, "{promql}: {body}");
    json(&body)
}

#[test]
fn every_dashboard_query_runs_on_prometheus_and_peer_legends_carry_names() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let peer = pair.wg_a.keys.public.clone();
    let names_dir = std::env::temp_dir().join(unique_name("wgpn"));
    std::fs::create_dir_all(&names_dir).unwrap();
    let names = names_dir.join("peers.toml");
    std::fs::write(
        &names,
        format!("[peers.\"{peer}\"]\nname = \"alice-laptop\"\n"),
    )
    .unwrap();
    let (config, state) = config(
        &pair,
        &format!("peers_file = {:?}\n", names.display().to_string()),
    );
    let agent = AgentProcess::start(&pair.b, &config);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        agent.count("serving /metrics") > 0
            && http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
    });
    let prom_dir = state.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wgpulse\n    static_configs:\n      - targets: ['{AGENT}']\n"),
    )
    .unwrap();
    let prometheus = "127.0.0.1:9591";
    let _prom = ChildGuard::new(
        pair.b
            .command(&[
                "prometheus",
                &format!("--config.file={}", prom_config.display()),
                &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                &format!("--web.listen-address={prometheus}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting prometheus"),
        "prometheus",
    );
    // Traffic during a few scrapes, so that rates have two samples to work with.
    wait_for(
        "Prometheus to scrape the agent",
        Duration::from_secs(40),
        || query(&pair, prometheus, "count(wireguard_peer_info)") == Some(1.0),
    );
    for _ in 0..4 {
        traffic::ping(&pair.a, pair.tunnel_addr_b(false), 5);
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/wgpulse.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut per_peer = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$device", ".*")
                .replace("$__rate_interval", "10s");
            let answer = query_raw(&pair, prometheus, &expr);
            assert_eq!(
                answer["status"], "success",
                "{}: {expr}: {answer}",
                panel["title"]
            );
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            if legend.contains("{{name}}") {
                per_peer += 1;
                let result = answer["data"]["result"].as_array().unwrap();
                assert!(
                    !result.is_empty(),
                    "{}: no series for {expr}",
                    panel["title"]
                );
                for series in result {
                    assert_eq!(
                        series["metric"]["name"], "alice-laptop",
                        "{}: the legend's name label",
                        panel["title"]
                    );
                }
            }
            assert!(
                !legend.contains("{{public_key}}"),
                "{}: legends show names, not keys",
                panel["title"]
            );
        }
    }
    assert!(per_peer >= 8, "{per_peer} per-peer queries");
    agent.kill();
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&names_dir);
}

/// The value of one series in a text exposition.
fn series(exposition: &str, name: &str, public_key: &str) -> Option<u64> {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("public_key=\"{public_key}\"")))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[test]
fn a_scrape_right_after_traffic_equals_wg_show() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    // Periodic device reads a minute apart: only a read-through can be fresh.
    let (config, state) = config(&pair, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("refresh_interval = \"500ms\"", "refresh_interval = \"60s\"");
    std::fs::write(&config, text).unwrap();
    let agent = AgentProcess::start(&pair.b, &config);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        agent.count("serving /metrics") > 0
            && http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
    });
    let peer = pair.wg_a.keys.public.clone();
    for round in 0..3 {
        traffic::ping(&pair.a, pair.tunnel_addr_b(false), 5);
        let dump = pair.wg_b.peer(&peer);
        let (status, exposition) = http(&pair.b, "GET", &format!("http://{AGENT}/metrics"), None);
        assert_eq!(status, 200);
        assert_eq!(
            (
                series(&exposition, "wireguard_peer_receive_bytes_total", &peer),
                series(&exposition, "wireguard_peer_transmit_bytes_total", &peer),
            ),
            (Some(dump.rx_bytes), Some(dump.tx_bytes)),
            "round {round}: /metrics must equal wg show right after traffic"
        );
    }
    agent.kill();
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn every_route_with_and_without_its_token_and_the_cli() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    receiver.script([Reply::Status(400)]);
    let secrets = std::env::temp_dir().join(unique_name("wgpt"));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("api"), "api-token-0123456789abcdef\n").unwrap();
    std::fs::write(secrets.join("metrics"), "metrics-token-0123456789abcdef\n").unwrap();
    let (config_path, state) = config(
        &pair,
        &format!(
            "[api]\ntoken_file = {api:?}\n[metrics]\ntoken_file = {metrics:?}\n[[webhooks]]\nname = \"hook\"\nurl = \"{url}\"\nevents = [\"peer_metric.*\"]\n[webhooks.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n",
            api = secrets.join("api").display().to_string(),
            metrics = secrets.join("metrics").display().to_string(),
            url = receiver.url(),
        ),
    );
    let agent = AgentProcess::start(&pair.b, &config_path);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        agent.count("serving /metrics") > 0
            && http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
    });
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let base = format!("http://{AGENT}");
    let api = Some("api-token-0123456789abcdef");
    let get =
        |path: &str, token: Option<&str>| http(&pair.b, "GET", &format!("{base}{path}"), token);

    assert_eq!(get("/healthz", None).0, 200);
    let (status, ready) = get("/readyz", None);
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    if !std::path::Path::new("/sys/module/wireguard").exists() {
        // The host kernel has no WireGuard module: TC-only, and readyz says why.
        assert_eq!(ready["kernel_mode"], false, "{ready}");
        assert_eq!(
            ready["kernel_mode_detail"], "the wireguard kernel module is not loaded",
            "{ready}"
        );
    }
    assert_eq!(get("/metrics", None).0, 401);
    assert_eq!(get("/metrics", Some("wrong")).0, 401);
    let (status, exposition) = get("/metrics", Some("metrics-token-0123456789abcdef"));
    assert_eq!(status, 200);
    assert!(exposition.contains("wgpulse_build_info"));
    assert!(
        !exposition.contains("api-token-0123456789abcdef")
            && !exposition.contains("metrics-token-0123456789abcdef")
    );
    for route in [
        "/api/v1/peers",
        "/api/v1/devices",
        "/api/v1/webhooks",
        "/api/v1/webhooks/hook/deliveries",
    ] {
        let (status, body) = get(route, None);
        assert_eq!(status, 401, "{route}: {body}");
        assert!(json(&body)["error"].is_string());
        assert_eq!(
            get(route, Some("metrics-token-0123456789abcdef")).0,
            401,
            "{route} with the other token"
        );
        assert_eq!(get(route, api).0, 200, "{route}");
    }
    let peer = pair.wg_a.keys.public.clone();
    let encoded = percent(&peer);
    let (status, body) = get(&format!("/api/v1/peers/{encoded}"), api);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["public_key"], peer.as_str());
    let unknown = percent(&wgpulse_tests::wireguard::WgKeys::generate().public);
    assert_eq!(get(&format!("/api/v1/peers/{unknown}"), api).0, 404);
    let (status, body) = get("/api/v1/peers/not-a-key", api);
    assert_eq!(status, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("public key"));
    assert_eq!(get("/api/v1/webhooks/nope/deliveries", api).0, 404);

    // The connect event was refused with a 400: a dead letter; replay delivers it.
    wait_for("the dead letter", Duration::from_secs(10), || {
        let (_, body) = get("/api/v1/webhooks/hook/dead-letters", api);
        json(&body)["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    });
    let post = |path: &str, token| http(&pair.b, "POST", &format!("{base}{path}"), token);
    assert_eq!(post("/api/v1/webhooks/hook/replay", None).0, 401);
    let (status, body) = post("/api/v1/webhooks/hook/replay", api);
    assert_eq!((status, json(&body)["replayed"].as_u64()), (200, Some(1)));
    let requests = receiver.wait_for(2, Duration::from_secs(10));
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    let (status, body) = post("/api/v1/webhooks/hook/test", api);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], 200);
    assert_eq!(receiver.requests().last().unwrap().json()["entity"], "test");

    // The command line asks the same API.
    let cli = |args: &[&str]| {
        let mut command = vec![binary()];
        command.extend(args.iter().map(|a| a.to_string()));
        command.extend(["--config".to_string(), config_path.display().to_string()]);
        let refs: Vec<&str> = command.iter().map(String::as_str).collect();
        pair.b.try_run(&refs)
    };
    let out = cli(&["peers"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("DEVICE"), "{table}");
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[1].contains(&pair.wg_b.name) && lines[1].contains(&peer) && lines[1].contains("yes"),
        "{table}"
    );
    assert!(lines[1].contains(&pair.endpoint_a().to_string()), "{table}");
    let out = cli(&["target", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.starts_with("hook  webhook  http://127.0.0.1:")
            && list.contains("delivered=1 failed=1"),
        "{list}"
    );
    // `webhook` is the old name of `target`: the same command.
    let out = cli(&["webhook", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), list);
    let out = cli(&["webhook", "test", "hook"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("status 200 in "),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["webhook", "test", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&secrets);
}

#[test]
fn check_config_names_every_error_by_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("max_peers = 10\ndrain_intervall = \"1s\"\n", &["2:1", "drain_intervall"]),
        ("max_peers = \"many\"\n", &["1:13", "max_peers"]),
        ("max_peers = 0\n", &["max_peers", "at least 1"]),
        ("[metrics]\nlisten = \"nowhere\"\n", &["metrics.listen", "nowhere"]),
        ("[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"\n", &["webhooks[0].url"]),
        ("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nevents = [\"peer\"]\n", &["webhooks[0].events", "\"peer\""]),
        ("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\n[[webhooks]]\nname = \"a\"\nurl = \"http://y\"\n", &["webhooks[1].name", "duplicate"]),
        ("[alerts]\nwindow = \"1ms\"\n", &["alerts.window"]),
        ("[outbox]\nmax_bytes = 10\n", &["outbox.max_bytes"]),
        ("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsigning_secret = \"s\"\nsigning_secret_env = \"S\"\n", &["webhooks[0].signing_secret"]),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(binary())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "case {i} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for want in *wanted {
            assert!(stderr.contains(want), "case {i}: {want:?} not in {stderr}");
        }
    }
    // What `run` would fail on is a problem for check-config too, with its line.
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let bad_peers = dir.path().join("peers.toml");
    std::fs::write(&bad_peers, "[peers.\"nope\"]\nname = 1\n").unwrap();
    let resource_cases: Vec<(String, Vec<String>)> = vec![
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nauthorization_file = \"/nonexistent/auth\"\n".into(),
            vec!["4: key `webhooks[0].authorization_file`".into(), "/nonexistent/auth".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nsigning_secret_file = \"/nonexistent/s\"\n".into(),
            vec!["4: key `webhooks[0].signing_secret_file`".into()],
        ),
        (
            "[api]\ntoken_file = \"/nonexistent/token\"\n".into(),
            vec!["2: key `api.token_file`".into()],
        ),
        (
            format!("[metrics]\ntoken_file = {:?}\n", empty.display().to_string()),
            vec!["2: key `metrics.token_file`".into(), "empty".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nauthorization_env = \"WGPULSE_SURELY_UNSET\"\n".into(),
            vec!["webhooks[0].authorization_env".into(), "WGPULSE_SURELY_UNSET".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nsigning_secret = \"whsec_%%%\"\n".into(),
            vec!["webhooks[0].signing_secret".into(), "base64".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\n[webhooks.headers]\nX-A = \"a\\r\\nB: c\"\n".into(),
            vec!["5: key `webhooks[0].headers.X-A`".into()],
        ),
        (
            format!("peers_file = {:?}\n", bad_peers.display().to_string()),
            vec!["1: key `peers_file`".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\n[webhooks.retry]\nmax_age = \"0s\"\n".into(),
            vec!["webhooks[0].retry.max_age".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:99999/x\"\n".into(),
            vec!["3: key `webhooks[0].url`".into(), "port".into()],
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\n[webhooks.headers]\nContent-Length = \"5\"\n".into(),
            vec!["webhooks[0].headers.Content-Length".into()],
        ),
        (
            // Three problems: three lines, each with its line number.
            "drain_intervall = \"1s\"\nmax_peers = 0\n[metrics]\nlisten = \"nowhere\"\n".into(),
            vec!["1:1".into(), "2: key `max_peers`".into(), "4: key `metrics.listen`".into()],
        ),
    ];
    for (i, (text, wanted)) in resource_cases.iter().enumerate() {
        let path = dir.path().join(format!("resource{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(binary())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env_remove("WGPULSE_SURELY_UNSET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "resource case {i} must fail: {stderr}"
        );
        for want in wanted {
            assert!(
                stderr.contains(want.as_str()),
                "resource case {i}: {want:?} not in {stderr}"
            );
        }
        if i == resource_cases.len() - 1 {
            assert_eq!(stderr.lines().count(), 3, "one line per problem: {stderr}");
        }
        // `run` refuses the same file, before it touches the kernel.
        let out = std::process::Command::new(binary())
            .args(["run", "--config", path.to_str().unwrap()])
            .env_remove("WGPULSE_SURELY_UNSET")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "resource case {i}: run must fail too"
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("wgpulse starting"),
            "resource case {i}"
        );
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[webhooks]]\nname = \"a\"\nurl = \"https://hooks.example.com/x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Path::new("");
}
