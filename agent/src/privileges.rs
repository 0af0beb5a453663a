//! Saying which privilege is missing when the kernel refuses: `bpf(2)`, attaching TC
//! programs and reading WireGuard over netlink fail with EPERM without them, and the
//! raw error ("failed to create map GLOBALS: Operation not permitted") says
//! nothing about what to grant. The effective capabilities come from
//! `/proc/self/status`.

/// The capabilities the agent needs, with what each is for.
pub const NEEDED: &[(&str, u32, &str)] = &[
    ("CAP_BPF", 39, "load programs and create maps"),
    (
        "CAP_PERFMON",
        38,
        "attach the drop tracepoint and read kernel memory from BPF",
    ),
    (
        "CAP_NET_ADMIN",
        12,
        "attach TC programs, read kernel WireGuard over netlink",
    ),
];

/// `CAP_SYS_ADMIN`, which older kernels require instead of BPF and PERFMON.
const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set of this process (`None` if it cannot be read).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The needed capabilities missing from `effective` (CAP_SYS_ADMIN stands in for
/// CAP_BPF and CAP_PERFMON).
pub fn missing(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    NEEDED
        .iter()
        .filter(|(name, bit, _)| {
            let stand_in = matches!(*name, "CAP_BPF" | "CAP_PERFMON") && has(CAP_SYS_ADMIN);
            !has(*bit) && !stand_in
        })
        .map(|(name, _, _)| *name)
        .collect()
}

/// Whether an error (or any of its causes) is the kernel refusing for want of a
/// privilege (EPERM or EACCES).
pub fn is_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
                || io.kind() == std::io::ErrorKind::PermissionDenied
            {
                return true;
            }
        }
        if err.to_string().contains("Operation not permitted") {
            return true;
        }
        current = err.source();
    }
    false
}

/// The one-line explanation for a refusal.
pub fn explain() -> String {
    let missing = effective().map(missing).unwrap_or_default();
    let grant = NEEDED
        .iter()
        .map(|(name, _, why)| format!("{name} ({why})"))
        .collect::<Vec<_>>()
        .join(", ");
    if missing.is_empty() {
        format!(
            "the kernel refused although the process has the capabilities; run as root, check the LSM (SELinux, AppArmor) and kernel.unprivileged_bpf_disabled; it needs {grant}"
        )
    } else {
        format!(
            "missing the capabilities {}: run as root, or grant {grant} (and CAP_DAC_OVERRIDE for wireguard-go's root-only sockets); see deploy/README.md",
            missing.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named_and_sys_admin_stands_in() {
        assert_eq!(missing(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << 39 | 1 << 38 | 1 << 12), Vec::<&str>::new());
        assert_eq!(missing(1 << 21), ["CAP_NET_ADMIN"]);
        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(is_denied(&denied));
        assert!(!is_denied(&std::io::Error::from_raw_os_error(libc::ENOENT)));
    }
}
