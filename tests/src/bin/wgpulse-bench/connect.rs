//! Part 3, connect latency: from the packet that completes a handshake (its capture
//! timestamp, tshark on the server's underlay) to the connect event arriving at a
//! loopback webhook receiver through the whole pipeline (ring buffer, peer table,
//! event queue, fsynced outbox, HTTP). Each round removes and re-adds the peer on both
//! sides, so every handshake is a new connect. Beside it, the latency a 60 s poller
//! (wg-portal's default) would have on the same timeline, over every poll phase. Two
//! webhooks receive every event: one in the single format, one in the batch format
//! (a JSON array per request, `batch.max_wait` at its default).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use std::net::SocketAddr;
use wgpulse::config::Config;
use wgpulse_tests::agent::InProcessAgent;

use wgpulse_tests::capture::{Capture, Datagram};
use wgpulse_tests::receiver::Receiver;
use wgpulse_tests::traffic;
use wgpulse_tests::wireguard::{Underlay, WgPair};

use crate::report::{percentile, Part, Plot, Row, Series};

/// Connect events that arrived (alone or in a batch), with their wall-clock arrival
/// times.
pub fn connects(receiver: &Receiver, wall0: SystemTime, mono0: Instant) -> Vec<SystemTime> {
    let mut out = Vec::new();
    for request in receiver.requests() {
        let events = match request.json() {
            serde_json::Value::Array(events) => events,
            event => vec![event],
        };
        for event in events {
            if event["event"] == "connect" {
                out.push(wall0 + (request.at - mono0));
            }
        }
    }
    out
}

fn count(receiver: &Receiver, event: &str) -> usize {
    receiver
        .requests()
        .iter()
        .filter(|r| r.json()["event"] == event)
        .count()
}

fn wait(what: &str, receiver: &Receiver, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the receiver has {:?}",
            receiver
                .requests()
                .iter()
                .map(|r| r.json()["entity"].as_str().unwrap_or("").to_owned()
                    + "."
                    + r.json()["event"].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// When each handshake that `responder` answered completed: the responder completes on
/// the first data packet after its response (capture timestamps).
pub fn completions(packets: &[Datagram], responder: SocketAddr) -> Vec<SystemTime> {
    let mut completions = Vec::new();
    let mut answered = false;
    for packet in packets {
        if packet.src == responder && packet.first_byte == Some(2) {
            answered = true;
        } else if answered && packet.dst == responder && packet.first_byte == Some(4) {
            completions.push(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(packet.time));
            answered = false;
        }
    }
    completions
}

/// Milliseconds from each handshake's completion to its connect's arrival, in order.
pub fn latencies_ms(completions: &[SystemTime], arrivals: &[SystemTime]) -> Vec<f64> {
    completions
        .iter()
        .zip(arrivals)
        .map(|(done, arrived)| {
            arrived
                .duration_since(*done)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
        })
        .collect()
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let rounds = if quick { 5 } else { 40 };
    let pair = WgPair::new(Underlay::V4);
    let state = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let batch_receiver = Receiver::start();
    let text = format!(
        "state_dir = {:?}\n[[webhooks]]\nname = \"bench\"\nurl = \"{}\"\n[[webhooks]]\nname = \"bench-batch\"\nurl = \"{}\"\nformat = \"batch\"\n",
        state.path().join("delivery").display().to_string(),
        receiver.url(),
        batch_receiver.url()
    );
    let delivery_config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let delivery = wgpulse_tests::agent::start_delivery(
        &delivery_config,
        runtime.handle(),
        &prometheus::Registry::new(),
    );
    let (wall0, mono0) = (SystemTime::now(), Instant::now());

    let capture = Capture::with_filter(
        &pair.b,
        &pair.link.b.name,
        &format!("udp port {}", pair.wg_b.port),
    );
    let mut agent = InProcessAgent::start(&pair, InProcessAgent::config(&pair, state.path()));
    let started = SystemTime::now();
    let a_key = pair.wg_a.keys.public.clone();
    let b_key = pair.wg_b.keys.public.clone();
    let allowed_a = format!("{}/32", pair.tunnel_a.0);
    let allowed_b = format!("{}/32", pair.tunnel_b.0);
    for round in 0..rounds {
        // Forward the agent's events to delivery as `wgpulse run` does.
        let forward = |agent: &mut InProcessAgent| delivery.accept(&agent.pending());
        if round > 0 {
            // A new peer on both sides: the next handshake is a new connect. The
            // agent must see the peer gone (a device read) before it comes back.
            pair.wg_b.remove_peer(&a_key);
            wait("the peer's delete", &receiver, || {
                forward(&mut agent);
                count(&receiver, "delete") >= round
            });
            pair.wg_b
                .set_peer(&a_key, Some(pair.endpoint_a()), &allowed_a);
            pair.wg_a.remove_peer(&b_key);
            pair.wg_a
                .set_peer(&b_key, Some(pair.endpoint_b()), &allowed_b);
            wait("the peer's create", &receiver, || {
                forward(&mut agent);
                count(&receiver, "create") >= round
            });
        }
        traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
        wait("the connect at the receivers", &receiver, || {
            forward(&mut agent);
            connects(&receiver, wall0, mono0).len() > round
                && connects(&batch_receiver, wall0, mono0).len() > round
        });
    }
    let packets = capture.stop();
    agent.stop();
    runtime.block_on(delivery.shutdown(Duration::from_secs(2)));

    let completions = completions(&packets, pair.endpoint_b());
    assert_eq!(
        completions.len(),
        rounds,
        "one completed handshake per round in the capture"
    );
    let latencies_at = |receiver: &Receiver| -> Vec<f64> {
        let arrivals = connects(receiver, wall0, mono0);
        assert_eq!(arrivals.len(), rounds, "one connect per round");
        latencies_ms(&completions, &arrivals)
    };
    let latencies = latencies_at(&receiver);
    let batch_latencies = latencies_at(&batch_receiver);
    // A 60 s poller, every phase in 100 ms steps, on the same handshake times.
    let mut poller = Vec::new();
    for phase in 0..600 {
        let phase = phase as f64 / 10.0;
        for done in &completions {
            let since = done
                .duration_since(started)
                .unwrap_or_default()
                .as_secs_f64()
                - phase;
            let next = (since / 60.0).floor() * 60.0 + 60.0;
            poller.push((next - since) * 1000.0);
        }
    }
    let (p50, p99) = (
        percentile(latencies.clone(), 50.0),
        percentile(latencies.clone(), 99.0),
    );
    let (poll50, poll99) = (percentile(poller.clone(), 50.0), percentile(poller, 99.0));
    let mut part = Part::new(
        "connect",
        "Connect latency",
        &format!("{rounds} handshakes; from the completing packet's capture timestamp to the connect event at loopback webhook receivers, one single-format and one batch-format webhook (outbox fsynced); a 60 s poller on the same timeline over every phase"),
    );
    part.rows.push(
        Row::new("wgpulse p50", p50, "ms").ratio(poll50 / p50, "x sooner than a 60 s poller"),
    );
    part.rows.push(
        Row::new("wgpulse p99", p99, "ms")
            .ratio(poll99 / p99, "x sooner than a 60 s poller")
            .target("< 1000 ms", p99 < 1000.0),
    );
    let batch99 = percentile(batch_latencies.clone(), 99.0);
    part.rows.push(Row::new(
        "wgpulse p50, batch format",
        percentile(batch_latencies, 50.0),
        "ms",
    ));
    part.rows.push(
        Row::new("wgpulse p99, batch format", batch99, "ms").target("< 50 ms", batch99 < 50.0),
    );
    part.rows.push(Row::new("60 s poller p50", poll50, "ms"));
    part.rows.push(Row::new("60 s poller p99", poll99, "ms"));
    let mut sorted = latencies;
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = sorted.len() as f64;
    part.plots.push(Plot {
        name: "connect".into(),
        title: "Connect latency, cumulative".into(),
        x: "ms from handshake to event at the receiver".into(),
        y: "fraction of handshakes".into(),
        log_x: false,
        series: vec![Series {
            name: "wgpulse".into(),
            points: sorted
                .iter()
                .enumerate()
                .map(|(i, ms)| (*ms, (i + 1) as f64 / n))
                .collect(),
        }],
    });
    part
}
