//! Part 6, delivery: events per second to a loopback receiver with the durable outbox
//! on (every append and every acknowledgement fsynced), in batch and in single mode,
//! and the latency from an event's creation to the receiver having it (p50, p99);
//! the same into NATS JetStream streams of one and three replicas.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use wgpulse::config::Config;
use wgpulse::events::Event;
use wgpulse_tests::receiver::Receiver;

use crate::report::{percentile, Part, Row};

/// One event of the bench's stream, created now (its timestamp is the latency's start).
fn event(i: usize) -> Event {
    Event::new(
        "bench",
        "peer_metric",
        "connect",
        &format!("peer-{}", i % 1000),
        serde_json::json!({"Status": {"IsConnected": true, "N": i}}),
    )
}

/// How the bench offers its events to delivery.
#[derive(Clone, Copy)]
enum Offer {
    /// All at once, as a burst (as `wgpulse run` accepts a full drain: up to 4096
    /// per transaction).
    Burst,
    /// At a steady rate (events per second), created in 1 ms steps as they are
    /// offered: each step's events are accepted together, as one drain's are.
    Steady(f64),
}

/// Delivers `n` events through one webhook of `format`; returns (events/s, p50 ms, p99 ms).
fn measure(format: &str, n: usize, offer: Offer) -> (f64, f64, f64) {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = {:?}\n[[webhooks]]\nname = \"bench\"\nurl = \"{}\"\nformat = \"{format}\"\nconcurrency = 8\n[webhooks.batch]\nmax_events = 500\nmax_wait = \"50ms\"\n",
        dir.path().display().to_string(),
        receiver.url()
    );
    let config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = prometheus::Registry::new();
    let delivery = wgpulse_tests::agent::start_delivery(&config, runtime.handle(), &registry);
    let (wall0, mono0) = (SystemTime::now(), Instant::now());
    let burst: Vec<Event> = match offer {
        Offer::Burst => (0..n).map(event).collect(),
        Offer::Steady(_) => Vec::new(),
    };
    let started = Instant::now();
    match offer {
        Offer::Burst => {
            // As `wgpulse run` accepts: everything queued, up to EVENT_BATCH per
            // transaction.
            for chunk in burst.chunks(4096) {
                delivery.accept(chunk);
            }
        }
        Offer::Steady(rate) => {
            let mut offered = 0;
            while offered < n {
                let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(n);
                if due > offered {
                    let events: Vec<Event> = (offered..due).map(event).collect();
                    delivery.accept(&events);
                    offered = due;
                }
                // The pace itself: the next step's events are due in 1 ms.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut received = 0;
    let mut requests = Vec::new();
    while received < n {
        assert!(
            Instant::now() < deadline,
            "only {received} of {n} events arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
        let new = receiver.requests_since(requests.len());
        // Counted from the headers (a batch id ends in its size): parsing every
        // body while the agent delivers would steal its CPU.
        received += new
            .iter()
            .map(|r| {
                r.header("webhook-id")
                    .and_then(|id| id.strip_prefix("batch_"))
                    .and_then(|id| id.rsplit('_').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(1)
            })
            .sum::<usize>();
        requests.extend(new);
    }
    let last = requests.iter().map(|r| r.at).max().unwrap();
    let rate = n as f64 / (last - started).as_secs_f64();
    let mut latencies = Vec::with_capacity(n);
    for request in &requests {
        let arrived = wall0 + (request.at - mono0);
        let body = request.json();
        let items = match body {
            serde_json::Value::Array(a) => a,
            one => vec![one],
        };
        for item in items {
            let created = time::OffsetDateTime::parse(
                item["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            let created = SystemTime::from(created);
            latencies.push(
                arrived
                    .duration_since(created)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0,
            );
        }
    }
    runtime.block_on(delivery.shutdown(Duration::from_secs(2)));
    (
        rate,
        percentile(latencies.clone(), 50.0),
        percentile(latencies, 99.0),
    )
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let (batched_n, single_n) = if quick { (5_000, 300) } else { (50_000, 3_000) };
    let mut part = Part::new(
        "delivery",
        "Webhook and NATS delivery",
        &format!("{batched_n} events batched (500 per request) and {single_n} single, to a loopback HTTP/1.1 receiver, outbox fsynced, offered at once; then a steady 5000 events/s (offered every 1 ms) in the batch format; latency from event creation to arrival. NATS: {batched_n} events to an R1 stream (one server) and an R3 stream (three-node cluster) on loopback, outbox fsynced, to the last PubAck; latency from event creation to the stream storing it (its own timestamps)"),
    );
    let (batched, b50, b99) = measure("batch", batched_n, Offer::Burst);
    let (single, s50, s99) = measure("single", single_n, Offer::Burst);
    // A steady 5k events/s for 10 s (2 s quick), batch format.
    let steady_n = if quick { 10_000 } else { 50_000 };
    let (steady, t50, t99) = measure("batch", steady_n, Offer::Steady(5_000.0));
    part.rows.push(
        Row::new("batched throughput", batched, "events/s")
            .target(">= 100000 events/s", batched >= 100_000.0),
    );
    part.rows.push(Row::new("batched latency p50", b50, "ms"));
    part.rows.push(Row::new("batched latency p99", b99, "ms"));
    part.rows.push(
        Row::new("single throughput", single, "events/s").ratio(single / batched, "x batched"),
    );
    part.rows.push(Row::new("single latency p50", s50, "ms"));
    part.rows.push(Row::new("single latency p99", s99, "ms"));
    part.rows.push(Row::new(
        "steady 5k events/s, batch format: throughput",
        steady,
        "events/s",
    ));
    part.rows
        .push(Row::new("steady 5k events/s: latency p50", t50, "ms"));
    part.rows.push(
        Row::new("steady 5k events/s: latency p99", t99, "ms").target("< 100 ms", t99 < 100.0),
    );
    for replicas in [1, 3] {
        let (rate, p50, p99) = measure_nats(replicas, batched_n);
        part.rows.push(
            Row::new(&format!("NATS R{replicas} throughput"), rate, "events/s")
                .ratio(rate / batched, "x batched webhook")
                .target(">= batched webhook", rate >= batched),
        );
        part.rows.push(Row::new(
            &format!("NATS R{replicas} latency p50 (to PubAck)"),
            p50,
            "ms",
        ));
        part.rows.push(Row::new(
            &format!("NATS R{replicas} latency p99 (to PubAck)"),
            p99,
            "ms",
        ));
    }
    part
}

/// Publishes `n` events through one NATS target into a stream of `replicas` (a
/// standalone server, or a three-node cluster for R3) on loopback in a namespace
/// of its own; returns (events/s to the last PubAck, p50 ms, p99 ms from event
/// creation to the stream storing it, as the stream's own timestamps say).
fn measure_nats(replicas: usize, n: usize) -> (f64, f64, f64) {
    let ns = wgpulse_tests::netns::NetNs::new("wpbn");
    let nats = wgpulse_tests::nats::NatsCluster::start(&ns, replicas.max(1), None);
    nats.create_stream("BENCH", "wgpulse.>", replicas, 0);
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        "state_dir = {:?}\n[[nats]]\nname = \"bench\"\nservers = [{}]\nstream = \"BENCH\"\n",
        dir.path().display().to_string(),
        servers.join(", ")
    );
    let config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    // The runtime's threads are made inside the namespace: their sockets are there.
    let (runtime, delivery) = {
        let _inside = ns.enter();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = prometheus::Registry::new();
        let delivery = wgpulse_tests::agent::start_delivery(&config, runtime.handle(), &registry);
        (runtime, delivery)
    };
    let ready = Instant::now() + Duration::from_secs(30);
    while delivery.webhooks()[0].problem.is_some() {
        assert!(Instant::now() < ready, "the NATS target did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events: Vec<Event> = (0..n).map(event).collect();
    let started = Instant::now();
    for chunk in events.chunks(4096) {
        delivery.accept(chunk);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = &delivery.webhooks()[0];
        if status.counters.delivered as usize >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events acknowledged",
            status.counters.delivered
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    runtime.block_on(delivery.shutdown(Duration::from_secs(2)));
    let messages = nats.read("BENCH");
    assert_eq!(messages.len(), n, "every event once in the stream");
    let latencies: Vec<f64> = messages
        .iter()
        .map(|m| {
            let created = time::OffsetDateTime::parse(
                m.event["timestamp"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            let created = created.unix_timestamp_nanos() as f64 / 1e9;
            (m.stored - created).max(0.0) * 1000.0
        })
        .collect();
    (
        rate,
        percentile(latencies.clone(), 50.0),
        percentile(latencies, 99.0),
    )
}
