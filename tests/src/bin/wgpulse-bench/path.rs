//! Part `path`: the agent's path figures against a relay's configured path. Two
//! wireguard-go devices talk through a UDP relay in a third namespace that delays
//! every datagram by 20 ms each way and drops every 20th data message from A (5%);
//! an agent on each end reports B's received loss, A's unsent, and the handshake
//! round trips of both roles, compared with what the relay was told to do and what
//! it counted.

use std::time::{Duration, Instant};

use wgpulse::peers::path::PathHealth;
use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::relay::{RelayOptions, Relayed};

use crate::report::{Part, Row};

const DELAY: Duration = Duration::from_millis(20);
const DROP_EVERY: u64 = 20;

fn path_of(agent: &InProcessAgent, device: &str, key: &str) -> PathHealth {
    agent.path_of(device, key)
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let pings: u32 = if quick { 300 } else { 2000 };
    let net = Relayed::new(RelayOptions {
        delay: DELAY,
        swap_every: None,
        drop_every: Some(DROP_EVERY),
    });
    let agent_a = InProcessAgent::watching(&net.a, &net.link_ar.a.name, &net.wg_a.name);
    let agent_b = InProcessAgent::watching(&net.b, &net.link_rb.b.name, &net.wg_b.name);
    let count = pings.to_string();
    let to = net.tunnel_b.to_string();
    net.a.try_run_timeout(
        &[
            "ping", "-q", "-n", "-c", &count, "-i", "0.005", "-W", "1", "-w", "120", &to,
        ],
        Duration::from_secs(130),
    );
    // Wait (bounded) for the last gaps to settle into the figures.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (at_b, at_a) = loop {
        let b = path_of(&agent_b, &net.wg_b.name, &net.wg_a.keys.public);
        let a = path_of(&agent_a, &net.wg_a.name, &net.wg_b.keys.public);
        if b.receive.lost == net.relay.dropped() || Instant::now() > deadline {
            break (b, a);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dropped = net.relay.dropped();
    let numbered = at_b.receive.packets + at_b.receive.lost;
    let configured_loss = 1.0 / DROP_EVERY as f64;
    let measured_loss = at_b.receive.lost as f64 / numbered.max(1) as f64;
    let relay_loss = dropped as f64 / numbered.max(1) as f64;
    let two_way = 2.0 * DELAY.as_secs_f64() * 1e3;
    let initiator = at_a
        .last_rtt()
        .map(|s| s.seconds() * 1e3)
        .unwrap_or(f64::NAN);
    let responder = at_b
        .last_rtt()
        .map(|s| s.seconds() * 1e3)
        .unwrap_or(f64::NAN);

    let mut part = Part::new(
        "path",
        "Path health against a relay's path",
        &format!(
            "wireguard-go through a UDP relay: {} ms each way, every {DROP_EVERY}th data message from A dropped; {pings} pings 5 ms apart; an agent at each end",
            DELAY.as_millis()
        ),
    );
    part.rows.push(
        Row::new("B's received loss (agent)", measured_loss * 100.0, "%")
            .ratio(measured_loss / configured_loss, "x configured 5%"),
    );
    part.rows.push(
        Row::new("messages the relay dropped", dropped as f64, "messages")
            .ratio(relay_loss / configured_loss, "x configured 5%"),
    );
    part.rows.push(
        Row::new(
            "B's lost messages (agent)",
            at_b.receive.lost as f64,
            "messages",
        )
        .ratio(
            at_b.receive.lost as f64 / dropped.max(1) as f64,
            "x the relay's count",
        )
        .target("= the relay's count", at_b.receive.lost == dropped),
    );
    part.rows.push(
        Row::new("A's unsent (agent)", at_a.transmit.lost as f64, "messages")
            .target("= 0 (the loss is on the path)", at_a.transmit.lost == 0),
    );
    part.rows.push(
        Row::new("round trip, A as initiator", initiator, "ms")
            .ratio(initiator / two_way, "x the relay's 40 ms"),
    );
    part.rows.push(
        Row::new("round trip, B as responder", responder, "ms")
            .ratio(responder / two_way, "x the relay's 40 ms"),
    );
    drop(agent_a);
    drop(agent_b);
    part
}
