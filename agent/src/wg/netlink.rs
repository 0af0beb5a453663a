//! Kernel WireGuard over generic netlink.
//!
//! Not implemented yet: on a host whose kernel has the `wireguard` module loaded,
//! discovery fails with a clear error instead of silently missing kernel devices.

/// Errors reading kernel WireGuard devices.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Kernel WireGuard is present but this build cannot read it yet.
    #[error("kernel WireGuard devices are present but netlink discovery is not implemented yet")]
    Unsupported,
}

/// Kernel WireGuard devices in the calling thread's network namespace.
pub fn kernel_devices() -> Result<Vec<super::Device>, NetlinkError> {
    if std::path::Path::new("/sys/module/wireguard").exists() {
        return Err(NetlinkError::Unsupported);
    }
    Ok(Vec::new())
}
