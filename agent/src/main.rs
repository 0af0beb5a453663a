//! The `wgpulse` binary.
fn main() {}
