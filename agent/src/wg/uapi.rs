//! Userspace WireGuard over the UAPI socket (to be implemented).
