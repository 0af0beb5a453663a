//! Webhook delivery against real HTTP receivers on loopback: formats, headers and
//! signatures (verified by Python's own hmac), HTTPS with a test CA, every fault
//! (5xx, 429 + Retry-After, 400, 410, timeout, refused, garbage) with its counters,
//! a full outbox and a full disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use wgpulse::config::Config;
use wgpulse::events::Event;
use wgpulse::sink::Delivery;
use wgpulse_tests::process::{run, wait_for};
use wgpulse_tests::receiver::{tls_config, Receiver, Reply};

/// A delivery with its own runtime, registry and state directory.
struct Harness {
    delivery: Delivery,
    registry: prometheus::Registry,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// `webhooks` is the TOML of the `[[webhooks]]` tables; `state_dir` the outbox's
    /// directory (default: a temporary one).
    fn start(webhooks: &str, extra: &str, state_dir: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = state_dir.unwrap_or(dir.path());
        let text = format!(
            "node = \"test-node\"\nstate_dir = {:?}\n{extra}\n{webhooks}",
            state.display().to_string()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = prometheus::Registry::new();
        let delivery = wgpulse_tests::agent::start_delivery(&config, runtime.handle(), &registry);
        Self {
            delivery,
            registry,
            runtime,
            _dir: dir,
        }
    }

    /// A metric's value for the given labels (0 when absent), read from the text
    /// exposition as a scraper would.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = series.split('{').next().unwrap();
            if metric == name
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            {
                return value.parse().unwrap();
            }
        }
        0.0
    }

    fn status(&self, name: &str) -> wgpulse::sink::WebhookStatus {
        self.delivery
            .webhooks()
            .into_iter()
            .find(|w| w.name == name)
            .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.runtime
            .block_on(self.delivery.shutdown(Duration::from_secs(2)));
    }
}

fn event(identifier: &str, n: u32) -> Event {
    Event::new(
        "test-node",
        "peer_metric",
        "connect",
        identifier,
        serde_json::json!({"Status": {"IsConnected": true, "N": n}}),
    )
}

/// Fast retries for the fault tests.
const FAST_RETRY: &str = "[webhooks.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n";

#[test]
fn single_events_carry_every_header_and_signatures_python_verifies() {
    let receiver = Receiver::start();
    let secret = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2";
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"portal\"\nurl = \"{}\"\nauthorization = \"Basic dXNlcjpwYXNz\"\nsigning_secret = [\"{secret}\", \"rotated-plain-secret\"]\nconcurrency = 2\n[webhooks.headers]\nX-Tenant = \"blue\"\n",
            receiver.url()
        ),
        "",
        None,
    );
    let events: Vec<Event> = (0..6)
        .map(|n| event(if n % 2 == 0 { "peer-a" } else { "peer-b" }, n))
        .collect();
    harness.delivery.accept(&events);
    let requests = receiver.wait_for(6, Duration::from_secs(10));

    let mut by_peer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert!(request
            .header("user-agent")
            .unwrap()
            .starts_with("wgpulse/"));
        assert_eq!(
            request.header("x-wgpulse-event"),
            Some("peer_metric.connect")
        );
        assert_eq!(request.header("authorization"), Some("Basic dXNlcjpwYXNz"));
        assert_eq!(request.header("x-tenant"), Some("blue"));
        let body = request.json();
        assert_eq!(request.header("webhook-id"), body["id"].as_str());
        let sent = events
            .iter()
            .find(|e| e.id == body["id"])
            .expect("a sent event");
        assert_eq!(body, serde_json::to_value(sent).unwrap());
        by_peer
            .entry(body["identifier"].as_str().unwrap().into())
            .or_default()
            .push(body["payload"]["Status"]["N"].as_u64().unwrap());

        // An independent implementation verifies both signatures of both secrets.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("body"), &request.body).unwrap();
        let script = r#"
import base64, hashlib, hmac, sys
body = open(sys.argv[1], 'rb').read()
msg_id, ts, std_sigs, gh_sigs = sys.argv[2:6]
secrets = [base64.b64decode(sys.argv[6][len('whsec_'):]), sys.argv[7].encode()]
signed = f"{msg_id}.{ts}.".encode() + body
want_std = ["v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode() for k in secrets]
want_gh = ["sha256=" + hmac.new(k, body, hashlib.sha256).hexdigest() for k in secrets]
assert std_sigs.split(" ") == want_std, (std_sigs, want_std)
assert gh_sigs.split(" ") == want_gh, (gh_sigs, want_gh)
print("verified")
"#;
        let out = run(
            "python3",
            &[
                "-c",
                script,
                dir.path().join("body").to_str().unwrap(),
                request.header("webhook-id").unwrap(),
                request.header("webhook-timestamp").unwrap(),
                request.header("webhook-signature").unwrap(),
                request.header("x-signature-256").unwrap(),
                secret,
                "rotated-plain-secret",
            ],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "verified");
    }
    assert_eq!(by_peer["peer-a"], [0, 2, 4], "per-peer order");
    assert_eq!(by_peer["peer-b"], [1, 3, 5], "per-peer order");
    wait_for("the outbox to empty", Duration::from_secs(5), || {
        harness.status("portal").queued == 0
    });
    assert_eq!(harness.status("portal").counters.delivered, 6);
    assert_eq!(
        harness.metric(
            "wgpulse_webhook_requests_total",
            &[("webhook", "portal"), ("outcome", "delivered")]
        ),
        6.0
    );
    assert_eq!(
        harness.metric("wgpulse_outbox_bytes", &[]),
        0.0,
        "delivered events leave the outbox"
    );
}

#[test]
fn batches_are_json_arrays_and_keep_their_id_across_retries() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(503)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"custodibus\"\nurl = \"{}\"\nformat = \"batch\"\nconcurrency = 1\n[webhooks.batch]\nmax_events = 4\nmax_wait = \"300ms\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    let events: Vec<Event> = (0..6).map(|n| event("peer-a", n)).collect();
    harness.delivery.accept(&events);
    let requests = receiver.wait_for(3, Duration::from_secs(10));
    // The first batch of 4 failed once and came again with the same id and body.
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    assert_eq!(requests[0].body, requests[1].body);
    assert!(
        requests[0].header("x-wgpulse-event").is_none(),
        "no single kind on a batch"
    );
    let first = requests[1].json();
    let second = requests[2].json();
    assert_eq!(first.as_array().unwrap().len(), 4);
    assert_eq!(second.as_array().unwrap().len(), 2);
    let ns: Vec<u64> = first
        .as_array()
        .unwrap()
        .iter()
        .chain(second.as_array().unwrap())
        .map(|e| e["payload"]["Status"]["N"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4, 5]);
    wait_for("delivered", Duration::from_secs(5), || {
        harness.status("custodibus").counters.delivered == 6
    });
    let status = harness.status("custodibus");
    assert_eq!((status.counters.failed, status.counters.retries), (1, 1));
}

#[test]
fn each_webhook_trusts_only_its_own_private_ca() {
    let (tls_a, ca_a) = tls_config();
    let (tls_b, ca_b) = tls_config();
    let receiver_a = Receiver::start_tls(tls_a);
    let receiver_b = Receiver::start_tls(tls_b);
    let dir = tempfile::tempdir().unwrap();
    let (file_a, file_b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    std::fs::write(&file_a, ca_a).unwrap();
    std::fs::write(&file_b, ca_b).unwrap();
    let hook = |name: &str, url: String, ca: Option<&Path>| {
        let mut text = format!("[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\n");
        if let Some(ca) = ca {
            text += &format!("ca_file = {:?}\n", ca.display().to_string());
        }
        text
    };
    let harness = Harness::start(
        &[
            hook("a", receiver_a.url(), Some(&file_a)),
            hook("b", receiver_b.url(), Some(&file_b)),
            // CA A's webhook pointed at B's receiver, and one with no private CA.
            hook("a-at-b", receiver_b.url(), Some(&file_a)),
            hook("none-at-a", receiver_a.url(), None),
            hook("a-again", receiver_a.url(), Some(&file_a)),
        ]
        .concat(),
        "",
        None,
    );
    let test = |name: &str| harness.runtime.block_on(harness.delivery.test(name));
    for name in ["a", "b", "a-again"] {
        assert_eq!(test(name).unwrap().status, Some(200), "{name}");
    }
    let (seen_a, seen_b) = (receiver_a.requests().len(), receiver_b.requests().len());
    assert_eq!((seen_a, seen_b), (2, 1));
    for name in ["a-at-b", "none-at-a"] {
        let err = test(name).unwrap_err().to_string();
        assert!(
            err.contains("certificate") || err.contains("UnknownIssuer"),
            "{name}: {err}"
        );
    }
    assert_eq!(
        (receiver_a.requests().len(), receiver_b.requests().len()),
        (seen_a, seen_b),
        "nothing was sent to a receiver its webhook does not trust"
    );
    let request = &receiver_a.requests()[0];
    assert_eq!(request.header("x-wgpulse-event"), Some("test.test"));
    assert_eq!(request.json()["entity"], "test");
}

#[test]
fn an_idle_batch_lane_sends_at_once_and_coalesces_while_a_request_is_in_flight() {
    let receiver = Receiver::start();
    // The first request is slow: what arrives meanwhile must wait for it.
    receiver.script([Reply::Delayed(Duration::from_millis(400), 200)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"batched\"\nurl = \"{}\"\nformat = \"batch\"\nconcurrency = 1\n",
            receiver.url()
        ),
        "",
        None,
    );
    let accepted = Instant::now();
    harness.delivery.accept(&[event("peer-a", 0)]);
    // Default batch settings: the lone event is not held back for a batch.
    receiver.wait_for(1, Duration::from_millis(300));
    eprintln!("a lone batch event arrived after {:?}", accepted.elapsed());
    // Nine more while the first request is in flight: one request with all nine.
    let more: Vec<Event> = (1..10).map(|n| event("peer-a", n)).collect();
    for event in more.chunks(1) {
        harness.delivery.accept(event);
    }
    let requests = receiver.wait_for(2, Duration::from_secs(5));
    let second = requests[1].json();
    assert_eq!(second.as_array().unwrap().len(), 9, "{second}");
    assert_eq!(receiver.requests().len(), 2);
}

#[test]
fn a_5xx_then_2xx_is_retried_with_the_same_id() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(500)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    harness.delivery.accept(&[event("peer-a", 1)]);
    let requests = receiver.wait_for(2, Duration::from_secs(5));
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    wait_for("delivered", Duration::from_secs(5), || {
        harness.status("w").counters.delivered == 1
    });
    assert_eq!(
        harness.metric(
            "wgpulse_webhook_requests_total",
            &[("webhook", "w"), ("outcome", "retry")]
        ),
        1.0
    );
    assert_eq!(
        harness.metric(
            "wgpulse_webhook_requests_total",
            &[("webhook", "w"), ("outcome", "delivered")]
        ),
        1.0
    );
    assert_eq!(
        harness.metric("wgpulse_webhook_retries_total", &[("webhook", "w")]),
        1.0
    );
    let deliveries = harness.delivery.deliveries("w").unwrap();
    assert_eq!(
        deliveries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [Some(500), Some(200)]
    );
}

#[test]
fn a_429_waits_for_retry_after() {
    let receiver = Receiver::start();
    receiver.script([Reply::WithHeaders(
        429,
        vec![("Retry-After".into(), "1".into())],
    )]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    harness.delivery.accept(&[event("peer-a", 1)]);
    let requests = receiver.wait_for(2, Duration::from_secs(5));
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "retried after {waited:?}, Retry-After said 1 s"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn a_400_is_not_retried_but_dead_lettered_and_replayable() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(400)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    let sent = event("peer-a", 1);
    harness.delivery.accept(std::slice::from_ref(&sent));
    receiver.wait_for(1, Duration::from_secs(5));
    wait_for("the dead letter", Duration::from_secs(5), || {
        harness.status("w").dead_letters == 1
    });
    // Give a retry every chance to happen (the backoff is at most 200 ms): none does.
    let before = Instant::now();
    wait_for(
        "time past the longest backoff",
        Duration::from_secs(2),
        || before.elapsed() > Duration::from_millis(600),
    );
    assert_eq!(receiver.requests().len(), 1, "a 400 is never retried");
    let dead = harness.delivery.dead_letters("w").unwrap();
    assert_eq!(dead, [(sent.id.clone(), "HTTP 400".to_string())]);
    assert_eq!(
        harness.metric("wgpulse_webhook_dead_letters_total", &[("webhook", "w")]),
        1.0
    );

    assert_eq!(harness.delivery.replay("w").unwrap(), 1);
    let requests = receiver.wait_for(2, Duration::from_secs(5));
    assert_eq!(requests[1].header("webhook-id"), Some(sent.id.as_str()));
    wait_for("delivered", Duration::from_secs(5), || {
        harness.status("w").counters.delivered == 1
    });
    assert_eq!(harness.status("w").dead_letters, 0);
}

#[test]
fn a_410_pauses_the_webhook_and_events_keep_queueing() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(410)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\nconcurrency = 1\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    harness.delivery.accept(&[event("peer-a", 1)]);
    receiver.wait_for(1, Duration::from_secs(5));
    wait_for("paused", Duration::from_secs(5), || {
        harness.status("w").paused.is_some()
    });
    harness
        .delivery
        .accept(&[event("peer-a", 2), event("peer-a", 3)]);
    wait_for("queued", Duration::from_secs(5), || {
        harness.status("w").queued == 3
    });
    assert_eq!(receiver.requests().len(), 1, "nothing sent while paused");
    assert_eq!(
        harness.metric(
            "wgpulse_webhook_requests_total",
            &[("webhook", "w"), ("outcome", "gone")]
        ),
        1.0
    );
}

#[test]
fn a_slow_receiver_past_the_timeout_is_retried() {
    let receiver = Receiver::start();
    receiver.script([Reply::Delayed(Duration::from_secs(2), 200)]);
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\ntimeout = \"300ms\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        None,
    );
    harness.delivery.accept(&[event("peer-a", 1)]);
    receiver.wait_for(2, Duration::from_secs(5));
    wait_for("delivered", Duration::from_secs(5), || {
        harness.status("w").counters.delivered == 1
    });
    let deliveries = harness.delivery.deliveries("w").unwrap();
    assert!(
        deliveries[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no response within"),
        "{deliveries:?}"
    );
    assert_eq!(deliveries[0].status, None);
}

#[test]
fn refused_connections_and_garbage_are_retried_until_the_receiver_works() {
    // A port nobody listens on: connection refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let harness = Harness::start(
        &format!("[[webhooks]]\nname = \"w\"\nurl = \"http://{addr}/hook\"\n{FAST_RETRY}"),
        "",
        None,
    );
    harness.delivery.accept(&[event("peer-a", 1)]);
    wait_for("two refused attempts", Duration::from_secs(5), || {
        harness.status("w").counters.failed >= 2
    });
    let error = harness.status("w").counters.last_error.unwrap();
    assert!(error.to_lowercase().contains("refused"), "{error}");
    let receiver = Receiver::start_on(addr);
    receiver.script([Reply::Garbage, Reply::Close]);
    let requests = receiver.wait_for(3, Duration::from_secs(5));
    wait_for("delivered", Duration::from_secs(5), || {
        harness.status("w").counters.delivered == 1
    });
    let ids: Vec<_> = requests
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "the same event every time"
    );
    assert_eq!(harness.status("w").queued, 0);
}

#[test]
fn a_full_outbox_drops_the_oldest_of_the_slowest_webhook() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let harness = Harness::start(
        &format!("[[webhooks]]\nname = \"down\"\nurl = \"http://{addr}/hook\"\n{FAST_RETRY}"),
        "[outbox]\nmax_bytes = 65536\n",
        None,
    );
    let big = "x".repeat(1000);
    let events: Vec<Event> = (0..200)
        .map(|n| {
            let mut e = event(&format!("peer-{n}"), n);
            e.payload["Pad"] = serde_json::json!(big);
            e
        })
        .collect();
    for chunk in events.chunks(10) {
        harness.delivery.accept(chunk);
    }
    let status = harness.status("down");
    assert!(status.counters.dropped > 100, "{status:?}");
    assert_eq!(
        status.queued as u64 + status.counters.dropped,
        200,
        "every event queued or counted as dropped"
    );
    assert!(harness.metric("wgpulse_outbox_bytes", &[]) <= 65536.0);
    assert_eq!(
        harness.metric(
            "wgpulse_outbox_dropped_events_total",
            &[("webhook", "down")]
        ),
        status.counters.dropped as f64
    );
}

#[test]
fn a_damaged_outbox_is_set_aside_counted_and_delivery_goes_on() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("outbox.redb"),
        b"garbage, not a redb file\n".repeat(64),
    )
    .unwrap();
    let harness = Harness::start(
        &format!("[[webhooks]]\nname = \"w\"\nurl = \"{}\"\n", receiver.url()),
        "",
        Some(dir.path()),
    );
    assert_eq!(
        harness.metric("wgpulse_outbox_damaged_total", &[("cause", "unreadable")]),
        1.0
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.redb.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    harness.delivery.accept(&[event("peer-a", 1)]);
    receiver.wait_for(1, Duration::from_secs(10));
}

#[test]
fn a_dead_letter_flood_keeps_the_outbox_within_its_limit() {
    let receiver = Receiver::start();
    receiver.set_default(Reply::Status(400));
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"rejecting\"\nurl = \"{}\"\n",
            receiver.url()
        ),
        "[outbox]\nmax_bytes = 65536\n",
        None,
    );
    let pad = "z".repeat(1000);
    let mut accepted = 0;
    for round in 0..20 {
        let events: Vec<Event> = (0..10)
            .map(|n| {
                let mut e = event(&format!("peer-{round}-{n}"), n);
                e.payload["Pad"] = serde_json::json!(pad);
                e
            })
            .collect();
        harness.delivery.accept(&events);
        accepted += events.len();
        // Each round is rejected and buried before the next arrives.
        wait_for(
            "the round to be dead-lettered",
            Duration::from_secs(10),
            || harness.status("rejecting").counters.dead as usize == accepted,
        );
        assert!(
            harness.metric("wgpulse_outbox_bytes", &[]) <= 65536.0 + 10.0 * 1200.0,
            "round {round}: the outbox grew past its limit"
        );
    }
    let expired = harness.metric(
        "wgpulse_outbox_dead_letters_expired_total",
        &[("webhook", "rejecting"), ("reason", "outbox_full")],
    );
    assert!(
        expired > 100.0,
        "the oldest dead letters made room: {expired}"
    );
    let status = harness.status("rejecting");
    assert_eq!(status.dead_letters as f64 + expired, 200.0, "{status:?}");
}

#[test]
fn a_full_disk_delivers_from_memory_and_stores_what_is_still_owed_once_there_is_room() {
    let tmpfs = wgpulse_tests::tmpfs::Tmpfs::mount("2m");
    let mount = tmpfs.path().to_owned();
    let receiver = Receiver::start();
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let harness = Harness::start(
        &format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"{}\"\n[[webhooks]]\nname = \"down\"\nurl = \"http://{down}/x\"\n{FAST_RETRY}",
            receiver.url()
        ),
        "",
        Some(&mount),
    );
    tmpfs.fill();
    let events: Vec<Event> = (0..50)
        .map(|n| {
            let mut e = event("peer-a", n);
            e.payload["Pad"] = serde_json::json!("y".repeat(4000));
            e
        })
        .collect();
    harness.delivery.accept(&events);
    // Delivered from memory while the disk is still full, in order.
    let requests = receiver.wait_for(50, Duration::from_secs(10));
    let ns: Vec<u64> = requests
        .iter()
        .map(|r| r.json()["payload"]["Status"]["N"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..50).collect::<Vec<u64>>(), "all of them, in order");
    assert_eq!(
        harness.metric("wgpulse_outbox_unwritten_events", &[]),
        50.0,
        "still owed to the webhook that is down: held, counted as unwritten"
    );
    assert_eq!(harness.status("down").queued, 50);
    tmpfs.free();
    wait_for(
        "the held events to be stored",
        Duration::from_secs(40),
        || harness.metric("wgpulse_outbox_unwritten_events", &[]) == 0.0,
    );
    drop(harness);
    // On disk now, for the webhook that still owes them, and only for it.
    let outbox = wgpulse::outbox::Outbox::open(&mount).unwrap();
    assert_eq!(outbox.pending("down").unwrap().len(), 50);
    assert!(outbox.pending("w").unwrap().is_empty());
}
