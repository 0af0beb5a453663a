//! Names and numbers unique on this host, so test binaries can run side by side.
//!
//! Namespace names, interface names and wireguard-go's UAPI sockets (in the shared
//! `/var/run/wireguard`) all live in host-wide name spaces: each name carries the
//! process id and a per-process counter. Addresses and ports need no such care:
//! they only exist inside the namespaces a test creates.

use std::sync::atomic::{AtomicU32, Ordering};

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// A name unique on this host: `<prefix><pid>_<n>`, `n` a per-process counter in
/// base 36.
///
/// The prefix must be ASCII letters (so that the process id that follows cannot be
/// mistaken for part of it) and the whole name at most 15 characters; panics
/// otherwise. With pids up to 7 digits a prefix of up to 5 letters always fits.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    assert!(
        !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_alphabetic()),
        "name prefix {prefix:?} must be ASCII letters"
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}_{}", std::process::id(), base36(n));
    assert!(
        name.len() <= MAX_NAME_LEN,
        "name {name} is longer than {MAX_NAME_LEN} characters: use a shorter prefix than {prefix:?}"
    );
    name
}

/// A small number (1..=250) that differs between calls of one process, for the
/// octets of test address blocks (`10.<n>.x.y`). Blocks of different processes may
/// coincide, which is harmless: they only exist inside each test's namespaces.
pub fn unique_octet() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id()
        .wrapping_mul(7)
        .wrapping_add(n.wrapping_mul(13))
        % 250
        + 1) as u8
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_name("wga");
        let b = unique_name("wga");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_NAME_LEN && a.starts_with("wga"));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 - 1), "zz");
    }

    #[test]
    #[should_panic(expected = "must be ASCII letters")]
    fn digits_in_prefix_are_refused() {
        unique_name("wg1");
    }
}
