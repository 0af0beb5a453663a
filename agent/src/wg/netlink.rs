//! Kernel WireGuard over generic netlink (to be implemented).
