//! wgpulse: an eBPF-backed WireGuard telemetry agent.
//!
//! The flow, stage by stage: [`datapath`] puts the eBPF programs into the kernel and
//! attaches them; [`drain`] reads their maps and ring buffer into typed
//! [`snapshot`]s; [`wg`] discovers WireGuard devices and their peers; the
//! [`pipeline`] feeds both into [`peers`], the live table with connect/disconnect
//! state, and [`alerts`]; [`events`] models what changed; [`outbox`] stores events
//! durably; [`sink`] delivers them to their targets; [`metrics`] and [`server`]
//! expose the table to Prometheus and the local API. [`app`] wires it all together.

pub mod alerts;
pub mod apiclient;
pub mod app;
pub mod background;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod drain;
pub mod events;
pub mod metrics;
pub mod outbox;
pub mod peers;
pub mod pipeline;
pub mod preflight;
pub mod privileges;
pub mod secrets;
pub mod server;
pub mod sink;
pub mod snapshot;
pub mod status;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod textpos;
pub mod throttle;
pub mod wg;
