//! Prometheus metrics built at scrape time: no second copy of per-peer state, and a
//! removed peer leaves no stale series. Per-peer and per-device series are copied
//! out of the live peer table under its lock ([`snapshot::Snapshot`], a fifth of the
//! text's size) and written from that copy into the text exposition in chunks
//! ([`encode_peers`], [`chunks`]) that the HTTP body sends as they fill;
//! the agent's own metrics come from a `prometheus` Collector ([`AgentCollector`])
//! and the delivery metrics from the registry. Per-peer series carry only `device`
//! and `public_key` (low cardinality); endpoint, allowed IPs and name are on
//! `wireguard_peer_info`.
//!
//! Why not a Collector for the peers too: building a `MetricVec` child per peer and
//! series (label hashing, an `Arc` each, sorting) cost 75 µs per peer, 0.76 s per
//! scrape at 10k peers; writing the lines directly from the table costs a few µs per
//! peer (see the scrape benchmark).
//!
//! `wireguard_peer_receive_bytes_total` / `transmit` are WireGuard's own counters (as
//! `wg show` and the exporters report them, kept monotonic across device resets);
//! packets and everything else come from the wire view, and the wire view's bytes
//! are `wgpulse_peer_wire_receive_bytes_total` / `transmit`, so what WireGuard rejected
//! or the socket dropped is one subtraction away.

pub mod chunks;
pub mod peers;
pub mod snapshot;

pub use peers::encode_peers;

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::status::Shared;

/// The per-peer and per-device exposition of `shared`'s table as one string (what
/// `/metrics` sends in chunks), for callers that want it whole.
pub fn peer_exposition(shared: &Shared) -> String {
    let snapshot = {
        let table = shared.table.read().expect("not poisoned");
        snapshot::Snapshot::take(&table, SystemTime::now())
    };
    chunks::collect(chunks::CHUNK_BYTES, |out| encode_peers(&snapshot, out))
}

fn unix(at: Option<SystemTime>) -> f64 {
    at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The metric families of one scrape.
struct Families {
    families: Vec<MetricFamily>,
}

impl Families {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&IntCounterVec),
    ) {
        let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn float_counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&CounterVec),
    ) {
        let vec = CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str], fill: impl FnOnce(&GaugeVec)) {
        let vec = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn int_gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&IntGaugeVec),
    ) {
        let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }
}

/// The agent's own metrics, read from its shared state at every scrape.
pub struct AgentCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl AgentCollector {
    /// A collector over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        let descs = vec![Desc::new(
            "wgpulse_build_info".into(),
            "wgpulse build information.".into(),
            vec!["version".into()],
            Default::default(),
        )
        .expect("valid desc")];
        Self { shared, descs }
    }
}

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        // The families vary with the table; describing one keeps the registry's
        // duplicate check meaningful without freezing the label sets.
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Families {
            families: Vec::new(),
        };
        let status = self.shared.status.read().expect("not poisoned").clone();
        out.gauge(
            "wgpulse_drain_duration_seconds",
            "Duration of the last drain of the datapath maps.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.last_drain.as_secs_f64());
            },
        );
        out.gauge(
            "wgpulse_device_read_duration_seconds",
            "Duration of the last read of the WireGuard devices (every device and its peers, and the table update).",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.last_device_read.as_secs_f64());
            },
        );
        out.gauge(
            "wgpulse_device_read_cpu_seconds",
            "CPU time the agent spent on the last read of the WireGuard devices (what the periodic-read budget charges).",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.last_device_read_cpu.as_secs_f64());
            },
        );
        out.counter(
            "wgpulse_drains_total",
            "Drains of the datapath maps.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str]).inc_by(status.drains);
            },
        );
        out.int_gauge(
            "wgpulse_kernel_mode",
            "1 while kernel-mode attribution reads kernel WireGuard's peers (kprobes), 0 when the datapath counts with the TC classifiers only.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(i64::from(status.kernel_mode));
            },
        );
        out.int_gauge(
            "wgpulse_map_entries",
            "Entries in the per-endpoint map.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.map_entries as i64);
            },
        );
        out.int_gauge(
            "wgpulse_map_capacity",
            "Capacity of the per-endpoint map (max_peers).",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(i64::from(status.map_capacity));
            },
        );
        out.counter(
            "wgpulse_map_overflow_packets_total",
            "Datagrams not counted per endpoint because the map was full.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.overflow_packets);
            },
        );
        out.counter(
            "wgpulse_ringbuf_lost_events_total",
            "Session notices lost because the ring buffer was full.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.events_lost);
            },
        );
        out.counter(
            "wgpulse_path_collisions_total",
            "Data messages of sessions whose transport counters were not followed: both slots of their index were held by busy sessions.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.path_collisions);
            },
        );
        out.counter(
            "wgpulse_drain_changes_lost_total",
            "Endpoint-change records that did not fit in the change ring; the drain then read the whole endpoint map.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.changes_lost);
            },
        );
        out.counter(
            "wgpulse_session_notices_total",
            "Session notices read from the ring buffer.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str]).inc_by(status.notices);
            },
        );
        out.counter(
            "wgpulse_state_saves_total",
            "Writes of the peer state file.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.persist_saves);
            },
        );
        out.counter(
            "wgpulse_state_save_failures_total",
            "Failed writes of the peer state file.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.persist_failures);
            },
        );
        out.counter(
            "wgpulse_alerts_total",
            "Alerts raised, by type.",
            &["type"],
            |vec| {
                for (kind, count) in &status.alerts {
                    vec.with_label_values(&[kind]).inc_by(*count);
                }
            },
        );
        out.counter(
            "wgpulse_events_total",
            "Events emitted, by entity and event.",
            &["entity", "event"],
            |vec| {
                for (kind, count) in self.shared.events.by_kind() {
                    let (entity, event) = kind.split_once('.').unwrap_or((&kind, ""));
                    vec.with_label_values(&[entity, event]).inc_by(count);
                }
            },
        );
        out.float_counter(
            "wgpulse_events_blocked_seconds_total",
            "Time the pipeline waited on a full event queue.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(self.shared.events.blocked_seconds())
            },
        );
        out.int_gauge(
            "wgpulse_build_info",
            "wgpulse build information (value 1).",
            &["version"],
            |vec| {
                vec.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            },
        );
        out.families
    }
}
