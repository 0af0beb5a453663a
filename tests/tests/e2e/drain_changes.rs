//! The change-driven drain against the real classifier (BPF_PROG_TEST_RUN): a drain
//! carries exactly the endpoints that moved since the last one, with exact deltas,
//! also when more endpoints move than the change ring holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use agent_common::programs;
use aya::programs::{TestRun, TestRunOptions};
use wgpulse::testing;

use super::classifier::{local4, Rig};

/// Endpoint `i` of a test: distinct addresses and ports.
fn endpoint(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i >> 8))),
        1024 + (i % 256) as u16,
    )
}

/// One 64-byte data message from endpoint `i`.
fn from(rig: &mut Rig, i: u32) {
    rig.ingress(endpoint(i), local4(), &testing::data(1, u64::from(i), 64));
}

/// Each drain's samples: endpoint -> received packets in the delta.
fn drained(rig: &mut Rig) -> HashMap<SocketAddr, u64> {
    rig.drain_once()
        .endpoints
        .iter()
        .map(|s| (s.endpoint.addr, s.delta.rx.packets))
        .collect()
}

#[test]
fn a_drain_carries_only_the_endpoints_that_moved() {
    let mut rig = Rig::new(64);
    for i in 0..3 {
        from(&mut rig, i);
    }
    assert_eq!(
        drained(&mut rig).len(),
        3,
        "the first drain reads everything"
    );
    from(&mut rig, 1);
    from(&mut rig, 1);
    assert_eq!(drained(&mut rig), HashMap::from([(endpoint(1), 2)]));
    // The next drain reads endpoint 1 once more (a write its last read could have
    // missed) and finds nothing new: an empty snapshot, not three unchanged samples.
    assert_eq!(drained(&mut rig), HashMap::new());
    assert_eq!(drained(&mut rig), HashMap::new());
    from(&mut rig, 2);
    let snapshot = rig.drain_once();
    assert_eq!(snapshot.endpoints.len(), 1);
    assert_eq!(
        snapshot.endpoints[0].totals.rx.packets, 2,
        "endpoint 2's total"
    );
    assert_eq!(snapshot.map_entries, 3, "the map still holds all three");
    assert_eq!(rig.endpoints()[&endpoint(1)].rx.packets, 3);
}

#[test]
fn interleaved_traffic_and_drains_keep_every_delta_exact() {
    let mut rig = Rig::new(256);
    let mut sent: HashMap<SocketAddr, u64> = HashMap::new();
    let mut drained_sum: HashMap<SocketAddr, u64> = HashMap::new();
    // A fixed pseudo-random walk: which endpoint sends how often before each drain.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _round in 0..40 {
        for _ in 0..30 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % 100) as u32;
            from(&mut rig, i);
            *sent.entry(endpoint(i)).or_default() += 1;
        }
        for (endpoint, packets) in drained(&mut rig) {
            *drained_sum.entry(endpoint).or_default() += packets;
        }
    }
    assert_eq!(
        drained_sum, sent,
        "the deltas add up to what was sent, per endpoint"
    );
    let totals = rig.endpoints();
    for (endpoint, packets) in &sent {
        assert_eq!(totals[endpoint].rx.packets, *packets, "{endpoint}");
    }
}

#[test]
fn more_changes_than_the_ring_holds_are_all_drained() {
    // The ring holds 16384 change records. 40000 endpoints are known; 17000 of them
    // move, few enough that the drain would read them key by key, but the ring
    // loses 616 announcements: the drain must see that and read the whole map.
    const KNOWN: u32 = 40_000;
    const MOVED: u32 = 17_000;
    let mut rig = Rig::new(65_536);
    for i in 0..KNOWN {
        from(&mut rig, i);
    }
    assert_eq!(drained(&mut rig).len(), KNOWN as usize);
    assert_eq!(drained(&mut rig).len(), 0);
    for i in 0..MOVED {
        from(&mut rig, i);
    }
    let snapshot = rig.drain_once();
    assert!(
        snapshot.globals.changes_lost > 0,
        "the ring overflowed (else this test tests nothing)"
    );
    let moved: HashMap<SocketAddr, u64> = snapshot
        .endpoints
        .iter()
        .map(|s| (s.endpoint.addr, s.delta.rx.packets))
        .collect();
    assert_eq!(moved.len(), MOVED as usize);
    assert!(moved.values().all(|&p| p == 1));
    assert_eq!(drained(&mut rig).len(), 0, "and nothing is reported twice");
}

#[test]
fn a_write_after_the_read_in_the_same_epoch_is_read_by_the_next_drain() {
    let mut rig = Rig::new(64);
    from(&mut rig, 0);
    from(&mut rig, 1);
    assert_eq!(drained(&mut rig).len(), 2);
    // Endpoint 1 moves after this drain set its epoch and before it read the ring:
    // announced in this epoch, read by this drain.
    let snapshot = {
        let Rig {
            datapath, drain, ..
        } = &mut rig;
        drain
            .drain_interleaved(|| {
                let payload = testing::data(1, 7, 64);
                let frame = testing::udp_frame(
                    endpoint(1),
                    local4(),
                    &payload,
                    &testing::FrameOptions::default(),
                );
                datapath
                    .classifier(programs::INGRESS)
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ..Default::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
            })
            .unwrap()
    };
    assert_eq!(snapshot.endpoints.len(), 1);
    assert_eq!(snapshot.endpoints[0].delta.rx.packets, 1);
    // It moves again, still in that epoch (no drain began since): not announced
    // again. The next drain must read it all the same.
    from(&mut rig, 1);
    assert_eq!(drained(&mut rig), HashMap::from([(endpoint(1), 1)]));
    assert_eq!(drained(&mut rig), HashMap::new());
}
