//! Unit tests of the classifier in the real kernel through `BPF_PROG_TEST_RUN`, each on
//! a private, unattached copy of the datapath, with crafted frames and exact counter
//! values. Needs root (CAP_BPF, CAP_NET_ADMIN).

use std::collections::HashMap;
use std::net::SocketAddr;

use agent_common::programs;
use aya::programs::{TestRun, TestRunOptions};

use wgpulse::datapath::{Datapath, LoadOptions};
use wgpulse::drain::Drain;
use wgpulse::snapshot::{
    EndpointStats, GlobalStats, PathCounts, PathDirection, Role, SessionNotice,
};
use wgpulse::testing::{self, FrameOptions};

const TC_ACT_PIPE: u32 = 3;
const PORT: u16 = 51820;

pub(crate) fn local4() -> SocketAddr {
    "192.0.2.1:51820".parse().unwrap()
}
fn remote4() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}
fn local6() -> SocketAddr {
    "[2001:db8::1]:51820".parse().unwrap()
}
fn remote6() -> SocketAddr {
    "[2001:db8::77]:40001".parse().unwrap()
}

/// A private datapath with WireGuard on port 51820 (device 0) and its drain.
pub(crate) struct Rig {
    pub(crate) datapath: Datapath,
    pub(crate) drain: Drain,
    /// The totals of every endpoint drained so far (a drain carries only the
    /// endpoints that moved).
    totals: HashMap<SocketAddr, EndpointStats>,
}

impl Rig {
    pub(crate) fn new(max_peers: u32) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "classifier tests load eBPF and must run as root"
        );
        let mut datapath = Datapath::load(&LoadOptions {
            max_peers,
            attach_drop_counter: false,
            kernel_attribution: false,
        })
        .expect("loading the datapath");
        datapath
            .set_ports(&HashMap::from([(PORT, 0)]))
            .expect("setting the port map");
        let drain = Drain::new(&mut datapath, max_peers).expect("opening the maps");
        Self {
            datapath,
            drain,
            totals: HashMap::new(),
        }
    }

    fn run(&mut self, program: &'static str, frame: &[u8]) {
        let classifier = self.datapath.classifier(program).unwrap();
        let result = classifier
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            result.return_value, TC_ACT_PIPE,
            "the classifier must always pipe"
        );
    }

    pub(crate) fn ingress(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let frame = testing::udp_frame(from, to, payload, &FrameOptions::default());
        self.run(programs::INGRESS, &frame);
    }

    pub(crate) fn egress(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let frame = testing::udp_frame(from, to, payload, &FrameOptions::default());
        self.run(programs::EGRESS, &frame);
    }

    /// One drain; its samples update `totals`.
    pub(crate) fn drain_once(&mut self) -> wgpulse::snapshot::Snapshot {
        let snapshot = self.drain.drain().unwrap();
        for sample in &snapshot.endpoints {
            self.totals.insert(sample.endpoint.addr, sample.totals);
        }
        snapshot
    }

    /// The totals of every endpoint counted so far, after a drain.
    pub(crate) fn endpoints(&mut self) -> HashMap<SocketAddr, EndpointStats> {
        self.drain_once();
        self.totals.clone()
    }

    pub(crate) fn globals(&mut self) -> GlobalStats {
        self.drain_once().globals
    }
}

#[test]
fn ipv4_each_message_type_is_counted_exactly() {
    let mut rig = Rig::new(16);
    rig.ingress(remote4(), local4(), &testing::initiation(1));
    rig.ingress(remote4(), local4(), &testing::response(2, 3));
    rig.ingress(remote4(), local4(), &testing::cookie(4));
    rig.ingress(remote4(), local4(), &testing::data(5, 0, 32));
    rig.ingress(remote4(), local4(), &testing::data(5, 1, 1440));
    rig.egress(local4(), remote4(), &testing::data(9, 0, 96));
    let endpoints = rig.endpoints();
    assert_eq!(endpoints.len(), 1);
    let stats = endpoints[&remote4()];
    assert_eq!(stats.rx.packets, 5);
    assert_eq!(stats.rx.bytes, 148 + 92 + 64 + 32 + 1440);
    assert_eq!(stats.rx.messages.initiations, 1);
    assert_eq!(stats.rx.messages.responses, 1);
    assert_eq!(stats.rx.messages.cookies, 1);
    assert_eq!(stats.rx.messages.data, 2);
    assert_eq!(stats.rx.invalid_packets, 0);
    assert_ne!(stats.rx.last_handshake_ns, 0);
    assert_eq!(stats.tx.packets, 1);
    assert_eq!(stats.tx.bytes, 96);
    assert_eq!(stats.tx.messages.data, 1);
    assert_eq!(stats.tx.last_handshake_ns, 0);
    assert_eq!(rig.globals(), GlobalStats::default());
}

#[test]
fn ipv6_with_extension_headers_is_counted() {
    let mut rig = Rig::new(16);
    rig.ingress(remote6(), local6(), &testing::data(5, 0, 64));
    let options = FrameOptions {
        ipv6_extensions: vec![0, 60],
        ..Default::default()
    };
    let frame = testing::udp_frame(remote6(), local6(), &testing::initiation(8), &options);
    rig.run(programs::INGRESS, &frame);
    let first_fragment = FrameOptions {
        ipv6_extensions: vec![44],
        ipv6_fragment_offset: 0,
        ..Default::default()
    };
    let frame = testing::udp_frame(
        remote6(),
        local6(),
        &testing::data(5, 1, 48),
        &first_fragment,
    );
    rig.run(programs::INGRESS, &frame);
    let stats = rig.endpoints()[&remote6()];
    assert_eq!(stats.rx.packets, 3);
    assert_eq!(stats.rx.bytes, 64 + 148 + 48);
    assert_eq!(stats.rx.messages.initiations, 1);
    assert_eq!(stats.rx.messages.data, 2);
}

#[test]
fn vlan_tagged_frames_are_counted() {
    let mut rig = Rig::new(16);
    for tags in [vec![0x8100], vec![0x88a8, 0x8100]] {
        let options = FrameOptions {
            vlan_tags: tags,
            ..Default::default()
        };
        let frame = testing::udp_frame(remote4(), local4(), &testing::data(5, 0, 80), &options);
        rig.run(programs::INGRESS, &frame);
    }
    let stats = rig.endpoints()[&remote4()];
    assert_eq!(stats.rx.packets, 2);
    assert_eq!(stats.rx.bytes, 160);
}

#[test]
fn ipv4_options_are_stepped_over() {
    let mut rig = Rig::new(16);
    for options in [4, 40] {
        let options = FrameOptions {
            ipv4_options: options,
            ..Default::default()
        };
        let frame = testing::udp_frame(remote4(), local4(), &testing::response(1, 2), &options);
        rig.run(programs::INGRESS, &frame);
    }
    let stats = rig.endpoints()[&remote4()];
    assert_eq!(stats.rx.packets, 2);
    assert_eq!(stats.rx.messages.responses, 2);
    assert_eq!(stats.rx.bytes, 2 * 92);
}

#[test]
fn layer3_frames_are_counted_by_the_l3_program() {
    let mut rig = Rig::new(16);
    let options = FrameOptions {
        no_ethernet: true,
        ..Default::default()
    };
    let frame = testing::udp_frame(remote4(), local4(), &testing::data(3, 0, 32), &options);
    rig.run(programs::INGRESS_L3, &frame);
    let frame = testing::udp_frame(local6(), remote6(), &testing::data(3, 0, 48), &options);
    rig.run(programs::EGRESS_L3, &frame);
    let endpoints = rig.endpoints();
    assert_eq!(endpoints[&remote4()].rx.packets, 1);
    assert_eq!(endpoints[&remote6()].tx.bytes, 48);
}

#[test]
fn non_first_fragments_are_counted_apart() {
    let mut rig = Rig::new(16);
    let v4 = FrameOptions {
        ipv4_fragment_offset: 185,
        ..Default::default()
    };
    let frame = testing::udp_frame(remote4(), local4(), &[0u8; 64], &v4);
    rig.run(programs::INGRESS, &frame);
    let v6 = FrameOptions {
        ipv6_extensions: vec![44],
        ipv6_fragment_offset: 100,
        ..Default::default()
    };
    let frame = testing::udp_frame(local6(), remote6(), &[0u8; 64], &v6);
    rig.run(programs::EGRESS, &frame);
    assert!(rig.endpoints().is_empty());
    let globals = rig.globals();
    assert_eq!(globals.rx_fragments, 1);
    assert_eq!(globals.tx_fragments, 1);
    assert_eq!(globals.malformed, 0);
}

#[test]
fn wrong_lengths_and_reserved_bytes_are_invalid_never_messages() {
    let mut rig = Rig::new(16);
    let mut wrong = vec![
        {
            let mut m = testing::initiation(1);
            m.push(0);
            m
        },
        testing::response(1, 2)[..91].to_vec(),
        {
            let mut m = testing::cookie(1);
            m.push(0);
            m
        },
        testing::data(1, 0, 32)[..31].to_vec(),
        vec![9u8; 40],
    ];
    let mut reserved = testing::data(1, 0, 64);
    reserved[2] = 1;
    wrong.push(reserved);
    let total: usize = wrong.iter().map(Vec::len).sum();
    for payload in &wrong {
        rig.ingress(remote4(), local4(), payload);
    }
    let stats = rig.endpoints()[&remote4()];
    assert_eq!(stats.rx.invalid_packets, 6);
    assert_eq!(stats.rx.invalid_bytes, total as u64);
    assert_eq!(stats.rx.packets, 0);
    assert_eq!(stats.rx.bytes, 0);
    assert_eq!(stats.rx.messages, Default::default());
    assert_eq!(stats.rx.last_handshake_ns, 0);
}

#[test]
fn truncated_headers_are_malformed() {
    let mut rig = Rig::new(16);
    // Frames that end inside the UDP header, or whose header lengths point past the
    // end; the IP length fields agree with the frame (the kernel's test run checks them).
    let full = testing::udp_frame(
        remote4(),
        local4(),
        &testing::data(1, 0, 32),
        &FrameOptions::default(),
    );
    let mut cut = full[..14 + 20 + 4].to_vec();
    cut[16..18].copy_from_slice(&24u16.to_be_bytes());
    rig.run(programs::INGRESS, &cut);
    let mut long_ihl = full[..14 + 20].to_vec();
    long_ihl[14] = 0x4f;
    long_ihl[16..18].copy_from_slice(&20u16.to_be_bytes());
    rig.run(programs::INGRESS, &long_ihl);
    let v6 = testing::udp_frame(
        remote6(),
        local6(),
        &testing::data(1, 0, 32),
        &FrameOptions {
            ipv6_extensions: vec![0],
            ..Default::default()
        },
    );
    let mut cut6 = v6[..14 + 40 + 4].to_vec();
    cut6[18..20].copy_from_slice(&4u16.to_be_bytes());
    rig.run(programs::INGRESS, &cut6);
    assert!(rig.endpoints().is_empty());
    assert_eq!(rig.globals().malformed, 3);
}

#[test]
fn other_ports_and_arp_are_ignored() {
    let mut rig = Rig::new(16);
    let dns: SocketAddr = "192.0.2.1:53".parse().unwrap();
    rig.ingress(remote4(), dns, &testing::data(1, 0, 64));
    rig.egress(dns, remote4(), &testing::initiation(1));
    rig.run(programs::INGRESS, &testing::arp_frame());
    assert!(rig.endpoints().is_empty());
    assert_eq!(rig.globals(), GlobalStats::default());
}

#[test]
fn a_full_map_counts_overflow_not_nothing() {
    let mut rig = Rig::new(2);
    for port in [40000, 40001, 40002, 40003] {
        let from = SocketAddr::new(remote4().ip(), port);
        rig.ingress(from, local4(), &testing::data(1, 0, 100));
    }
    // The first two endpoints keep being counted once the map is full.
    rig.ingress(remote4(), local4(), &testing::data(1, 1, 50));
    let endpoints = rig.endpoints();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[&remote4()].rx.bytes, 150);
    let globals = rig.globals();
    assert_eq!(globals.overflow_packets, 2);
    assert_eq!(globals.overflow_bytes, 200);
}

#[test]
fn handshakes_complete_only_when_the_session_is_confirmed() {
    let mut rig = Rig::new(16);
    // We initiate (index 0x1111), the peer answers (its index 0x2222): complete as initiator.
    let before_initiation = std::time::Instant::now();
    rig.egress(local4(), remote4(), &testing::initiation(0x1111));
    assert!(
        rig.drain.read_notices().is_empty(),
        "an initiation alone is no handshake"
    );
    rig.ingress(remote4(), local4(), &testing::response(0x2222, 0x1111));
    let initiator_bound = before_initiation.elapsed();
    let notices = rig.drain.read_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    match &notices[0] {
        SessionNotice::HandshakeComplete {
            role,
            local_index,
            remote_index,
            endpoint,
            rtt,
            ..
        } => {
            // The programs' own clock: more than zero, less than the test's own
            // measure around both messages.
            let rtt = rtt.expect("an initiator round trip");
            assert!(
                rtt > std::time::Duration::ZERO && rtt <= initiator_bound,
                "{rtt:?}"
            );
            assert_eq!(*role, Role::Initiator);
            assert_eq!((*local_index, *remote_index), (0x1111, 0x2222));
            assert_eq!(endpoint.addr, remote4());
        }
        other => panic!("unexpected {other:?}"),
    }
    // A repeated response is no second handshake.
    rig.ingress(remote4(), local4(), &testing::response(0x2222, 0x1111));
    assert!(rig.drain.read_notices().is_empty());

    // The peer initiates; we answer with index 0x3333; its first data completes it.
    rig.ingress(remote6(), local6(), &testing::initiation(0x4444));
    let before_response = std::time::Instant::now();
    rig.egress(local6(), remote6(), &testing::response(0x3333, 0x4444));
    assert!(
        rig.drain.read_notices().is_empty(),
        "a response alone is no handshake"
    );
    rig.ingress(remote6(), local6(), &testing::data(0x3333, 0, 32));
    let responder_bound = before_response.elapsed();
    rig.ingress(remote6(), local6(), &testing::data(0x3333, 1, 64));
    let notices = rig.drain.read_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    match &notices[0] {
        SessionNotice::HandshakeComplete {
            role: Role::Responder,
            local_index: 0x3333,
            rtt: Some(rtt),
            ..
        } => assert!(
            *rtt > std::time::Duration::ZERO && *rtt <= responder_bound,
            "{rtt:?}"
        ),
        other => panic!("expected a responder handshake with its round trip, got {other:?}"),
    }

    // The same session's data from a new address: roaming.
    let roamed: SocketAddr = "[2001:db8::99]:41000".parse().unwrap();
    rig.ingress(roamed, local6(), &testing::data(0x3333, 2, 64));
    let notices = rig.drain.read_notices();
    match &notices[..] {
        [SessionNotice::EndpointChanged {
            previous, endpoint, ..
        }] => {
            assert_eq!(previous.addr, remote6());
            assert_eq!(endpoint.addr, roamed);
        }
        other => panic!("expected one endpoint change, got {other:?}"),
    }
}

#[test]
fn garbage_of_right_looking_sizes_never_completes_a_handshake() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut rig = Rig::new(64);
    // Give the garbage a real pending session to hit, as on a live device.
    rig.egress(local4(), remote4(), &testing::initiation(0xabcd));
    let attacker: SocketAddr = "203.0.113.9:6666".parse().unwrap();
    let mut sent = 0u64;
    for _ in 0..500 {
        let len = [148usize, 92, 64, 32, 48, 1440][rng.gen_range(0..6)];
        let mut payload = vec![0u8; len];
        rng.fill(&mut payload[..]);
        rig.ingress(attacker, local4(), &payload);
        sent += 1;
    }
    assert!(rig.drain.read_notices().is_empty());
    let stats = rig.endpoints()[&attacker];
    assert_eq!(stats.rx.packets + stats.rx.invalid_packets, sent);
    // Random first bytes are almost never a valid type with zero reserved bytes.
    assert!(stats.rx.invalid_packets >= sent - 2, "{stats:?}");
}

/// Sums a drain's path deltas per (direction, index).
fn paths(rig: &mut Rig) -> HashMap<(PathDirection, u32), PathCounts> {
    let mut out: HashMap<(PathDirection, u32), PathCounts> = HashMap::new();
    for sample in rig.drain_once().paths {
        out.entry((sample.direction, sample.index))
            .or_default()
            .add(&sample.delta);
    }
    out
}

fn receive(rig: &mut Rig, index: u32, counters: impl IntoIterator<Item = u64>) {
    for counter in counters {
        rig.ingress(remote4(), local4(), &testing::data(index, counter, 64));
    }
}

fn counts(packets: u64, lost: u64, late: u64, duplicates: u64) -> PathCounts {
    PathCounts {
        packets,
        lost,
        late,
        duplicates,
    }
}

#[test]
fn counters_in_order_lose_nothing() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, 0..10);
    assert_eq!(
        paths(&mut rig),
        HashMap::from([((PathDirection::Receive, 7), counts(10, 0, 0, 0))])
    );
    assert!(paths(&mut rig).is_empty(), "nothing moved since");
}

#[test]
fn a_gap_that_left_the_window_is_lost() {
    let mut rig = Rig::new(16);
    // Counter 2 never comes; 68 later ones push it out of the 64-wide window.
    receive(&mut rig, 7, (0..2).chain(3..71));
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 7)],
        counts(70, 1, 0, 0)
    );
}

#[test]
fn late_messages_fill_their_gap_and_duplicates_are_told_apart() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, [0, 1, 3, 2, 4, 4, 1]);
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 7)],
        counts(5, 0, 1, 2)
    );
}

#[test]
fn at_the_window_edge_late_stays_late_and_a_counted_loss_stays_counted() {
    let mut rig = Rig::new(16);
    // 0..=100 without 36 and 37: 36 is 64 behind the highest (out of the window,
    // lost), 37 is 63 behind (still in it, maybe late).
    receive(&mut rig, 9, (0..36).chain(38..101));
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 9)],
        counts(99, 1, 0, 0)
    );
    // Both arrive after all: each is late; 37 fills its bit; 36 was already counted
    // lost, and a running figure is never lowered.
    receive(&mut rig, 9, [37, 36]);
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 9)],
        counts(2, 0, 2, 0)
    );
}

#[test]
fn a_new_index_is_a_new_session_without_a_false_gap() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, 0..80);
    receive(&mut rig, 8, 0..5);
    let paths = paths(&mut rig);
    assert_eq!(paths[&(PathDirection::Receive, 7)], counts(80, 0, 0, 0));
    assert_eq!(paths[&(PathDirection::Receive, 8)], counts(5, 0, 0, 0));
}

#[test]
fn a_session_seen_mid_way_expects_nothing_before_its_first_counter() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, [1000, 1001, 999, 1002]);
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 7)],
        counts(3, 0, 0, 0)
    );
}

#[test]
fn a_forged_jump_moves_nothing() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, 0..5);
    receive(&mut rig, 7, [1u64 << 40]);
    receive(&mut rig, 7, 5..70);
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 7)],
        counts(70, 0, 0, 0)
    );
}

#[test]
fn sent_gaps_are_unsent_messages() {
    let mut rig = Rig::new(16);
    for counter in (0..10).chain(11..80) {
        rig.egress(local4(), remote4(), &testing::data(0x55, counter, 96));
    }
    assert_eq!(
        paths(&mut rig),
        HashMap::from([((PathDirection::Transmit, 0x55), counts(79, 1, 0, 0))])
    );
}

#[test]
fn truncated_or_invalid_data_messages_track_no_session() {
    let mut rig = Rig::new(16);
    // Type 4 with fewer than 32 bytes: no data message, so no counter is read.
    let mut short = testing::data(7, 5, 32);
    short.truncate(20);
    rig.ingress(remote4(), local4(), &short);
    // Reserved bytes not zero: invalid.
    let mut reserved = testing::data(7, 6, 64);
    reserved[2] = 1;
    rig.ingress(remote4(), local4(), &reserved);
    assert!(paths(&mut rig).is_empty());
    assert_eq!(rig.endpoints()[&remote4()].rx.invalid_packets, 2);
}

#[test]
fn a_third_busy_session_on_one_slot_pair_is_counted_as_a_collision() {
    let mut rig = Rig::new(16);
    // 16 peers: 256 slots; indices 256 apart share a slot pair.
    let slots = wgpulse::datapath::path_slots(16);
    assert_eq!(slots, 256);
    for index in [5, 5 + slots, 5 + 2 * slots] {
        receive(&mut rig, index, 0..3);
    }
    let snapshot = rig.drain_once();
    let followed: Vec<u32> = snapshot.paths.iter().map(|s| s.index).collect();
    assert_eq!(followed.len(), 2, "{followed:?}");
    assert!(!followed.contains(&(5 + 2 * slots)));
    assert_eq!(snapshot.globals.path_collisions, 3, "each of its messages");
}

#[test]
fn a_gap_inside_the_window_is_lost_once_the_session_is_quiet() {
    let mut rig = Rig::new(16);
    receive(&mut rig, 7, [0, 1, 3]);
    assert_eq!(
        paths(&mut rig)[&(PathDirection::Receive, 7)],
        counts(3, 0, 0, 0),
        "counter 2 may still come"
    );
    // The rule is about time: a second without messages settles the gap. The next
    // drain comes 3.2 s later (as with a long drain_interval) and must still count it.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert_eq!(
        paths(&mut rig),
        HashMap::from([((PathDirection::Receive, 7), counts(0, 1, 0, 0))])
    );
    assert!(
        paths(&mut rig).is_empty(),
        "settled: nothing more to report"
    );
}
