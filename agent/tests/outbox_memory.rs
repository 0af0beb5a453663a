//! The outbox's memory, in a process of its own (the resident set is the whole
//! process's: tests running beside it in the library's test binary would move it).

use wgpulse::outbox::{Incoming, Outbox};

/// The process's resident set, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn the_page_cache_stays_bounded_when_many_events_pass_through() {
    // 64 MB of events appended, read back and delivered, 2000 at a time: redb's
    // default cache (1 GiB) kept every page it had read or written.
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let padding = "x".repeat(1000);
    let before = rss_bytes();
    for round in 0..32u32 {
        let bodies: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!(r#"{{"n":{},"pad":"{padding}"}}"#, round * 2000 + i).into_bytes())
            .collect();
        let incoming: Vec<Incoming> = bodies
            .iter()
            .map(|b| Incoming {
                body: b,
                identifier: "peer",
                created_ms: 0,
                webhooks: vec!["hook"],
            })
            .collect();
        let seqs = outbox.append(&incoming).seqs;
        outbox.flush().unwrap();
        assert_eq!(outbox.load(&seqs).unwrap().len(), 2000);
    }
    // Every event read back once more (a replay), then delivered.
    let pending: Vec<u64> = outbox
        .pending("hook")
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(pending.len(), 64_000);
    for seqs in pending.chunks(2000) {
        assert_eq!(outbox.load(seqs).unwrap().len(), seqs.len());
    }
    let grown = rss_bytes().saturating_sub(before);
    outbox.ack("hook", &pending).unwrap();
    assert!(
        grown < 40 << 20,
        "the process grew by {} MiB for a 64 MB outbox",
        grown >> 20
    );
}
