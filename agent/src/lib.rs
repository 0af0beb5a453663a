//! wgpulse: an eBPF-backed WireGuard telemetry agent.
//!
//! The flow, module by module: [`loader`] puts the eBPF datapath into the kernel and
//! attaches it; [`drain`] reads its maps and ring buffer into typed [`snapshot`]s;
//! [`wg`] discovers WireGuard devices and their peers; [`peers`] turns both into a
//! live peer table with connect/disconnect state; [`events`] models what changed;
//! [`outbox`] stores events durably; [`sink`] delivers them to webhooks; [`metrics`]
//! and [`server`] expose the table to Prometheus and the local API.

pub mod alerts;
pub mod apiclient;
pub mod app;
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
