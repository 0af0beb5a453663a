//! The TC entry points (ingress and egress, with and without an Ethernet header, and
//! a no-op for benchmarks): parse, account, and always `TC_ACT_PIPE`.

use crate::account::*;
use crate::parse::*;
use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};

/// Ethernet-framed ingress.
#[classifier]
pub fn wgpulse_ingress(ctx: TcContext) -> i32 {
    let _ = observe::<true, true, true>(&ctx);
    TC_ACT_PIPE
}

/// Ethernet-framed egress.
#[classifier]
pub fn wgpulse_egress(ctx: TcContext) -> i32 {
    let _ = observe::<true, false, true>(&ctx);
    TC_ACT_PIPE
}

/// Layer-3 (no link header) ingress.
#[classifier]
pub fn wgpulse_ingress_l3(ctx: TcContext) -> i32 {
    let _ = observe::<false, true, true>(&ctx);
    TC_ACT_PIPE
}

/// Layer-3 (no link header) egress.
#[classifier]
pub fn wgpulse_egress_l3(ctx: TcContext) -> i32 {
    let _ = observe::<false, false, true>(&ctx);
    TC_ACT_PIPE
}

/// Ethernet-framed ingress without the per-session counter window: the benchmark's
/// side-by-side measure of what path tracking costs (never attached).
#[classifier]
pub fn wgpulse_ingress_no_paths(ctx: TcContext) -> i32 {
    let _ = observe::<true, true, false>(&ctx);
    TC_ACT_PIPE
}

/// Baseline for the datapath benchmark.
#[classifier]
pub fn wgpulse_noop(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

#[inline(always)]
pub(crate) fn observe<const ETHERNET: bool, const INGRESS: bool, const PATHS: bool>(
    ctx: &TcContext,
) -> Result<(), ()> {
    if let Some(parsed) = parse_direct::<ETHERNET>(ctx) {
        return account::<INGRESS, PATHS>(ctx, &parsed);
    }
    let parsed = match parse::<ETHERNET>(ctx).and_then(|d| load_transport(ctx, d)) {
        Ok(parsed) => parsed,
        Err(Skip::NotOurs) => return Ok(()),
        Err(Skip::Malformed) => {
            bump_global(|g| g.malformed += 1);
            return Ok(());
        }
        Err(Skip::Fragment) => {
            if INGRESS {
                bump_global(|g| g.rx_fragments += 1);
            } else {
                bump_global(|g| g.tx_fragments += 1);
            }
            return Ok(());
        }
    };
    account::<INGRESS, PATHS>(ctx, &parsed)
}
