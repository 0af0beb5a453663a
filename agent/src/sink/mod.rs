//! Webhook delivery (to be implemented: delivery issue).

pub mod config;
