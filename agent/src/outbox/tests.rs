//! The outbox against real files: appends, acknowledgements, dead letters and
//! replay across a reopen; damaged files (truncated, flipped bytes, garbage, empty)
//! set aside and salvaged; dead-letter retention by age and share.

use super::*;

fn body(identifier: &str, n: u32) -> Vec<u8> {
    format!(r#"{{"id":"{n}","timestamp":"2026-01-01T00:00:00Z","identifier":"{identifier}","event":"x"}}"#)
        .into_bytes()
}

#[test]
fn append_ack_bury_replay_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let bodies: Vec<Vec<u8>> = (0..3).map(|n| body("peer-a", n)).collect();
    let incoming: Vec<Incoming> = bodies
        .iter()
        .map(|b| Incoming {
            body: b,
            identifier: "peer-a",
            created_ms: 0,
            webhooks: vec!["one", "two"],
        })
        .collect();
    let seqs = outbox.append(&incoming).seqs;
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(outbox.pending("one").unwrap().len(), 3);
    assert_eq!(outbox.pending("one").unwrap()[0].identifier, "peer-a");
    outbox.ack("one", &[1, 2]).unwrap();
    assert_eq!(outbox.len().unwrap(), 3, "two still needs them");
    outbox.ack("two", &[1]).unwrap();
    assert_eq!(outbox.len().unwrap(), 2);
    outbox.bury("two", &[2], "400 Bad Request").unwrap();
    assert_eq!(outbox.dead("two").unwrap()[0].1, "400 Bad Request");
    drop(outbox);

    let outbox = Outbox::open(dir.path()).unwrap();
    let next = outbox
        .append(&[Incoming {
            body: &body("peer-b", 9),
            identifier: "peer-b",
            created_ms: 0,
            webhooks: vec!["one"],
        }])
        .seqs;
    assert_eq!(next, [4], "sequence numbers continue after a reopen");
    let replayed = outbox.replay("two").unwrap();
    assert_eq!(replayed.iter().map(|s| s.seq).collect::<Vec<_>>(), [2]);
    assert!(outbox.dead("two").unwrap().is_empty());
    assert_eq!(
        outbox
            .pending("two")
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    let bytes_before = outbox.bytes();
    outbox.ack("one", &[3, 4]).unwrap();
    outbox.ack("two", &[2, 3]).unwrap();
    assert!(outbox.is_empty().unwrap());
    assert!(outbox.bytes() < bytes_before);
    assert_eq!(outbox.bytes(), 0);
}

/// An outbox with `n` events pending for "hook", closed again; returns its file.
fn filled(dir: &Path, n: u32) -> PathBuf {
    let outbox = Outbox::open(dir).unwrap();
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| body("peer", i)).collect();
    let incoming: Vec<Incoming> = bodies
        .iter()
        .map(|b| Incoming {
            body: b,
            identifier: "peer",
            created_ms: 0,
            webhooks: vec!["hook"],
        })
        .collect();
    let appended = outbox.append(&incoming);
    assert!(appended.unwritten.is_none());
    assert!(outbox.damage().is_none());
    outbox.path().to_owned()
}

fn aside_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("outbox.redb.bad-"))
        .collect()
}

#[test]
fn a_truncated_file_is_set_aside_and_a_fresh_outbox_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 50);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let outbox = Outbox::open(dir.path()).expect("a damaged file must not stop the start");
    let damage = outbox.damage().expect("reported").clone();
    eprintln!("truncated: {damage:?}");
    assert!(!damage.cause.is_empty());
    assert_eq!(aside_files(dir.path()), [damage.aside.clone().unwrap()]);
    // The fresh outbox works, and what was salvaged (if anything) is pending again.
    let salvaged = damage.salvaged.unwrap_or(0);
    assert_eq!(outbox.pending("hook").unwrap().len(), salvaged);
    let seqs = outbox
        .append(&[Incoming {
            body: &body("peer", 99),
            identifier: "peer",
            created_ms: 0,
            webhooks: vec!["hook"],
        }])
        .seqs;
    assert!(seqs[0] > 0);
    drop(outbox);
    let again = Outbox::open(dir.path()).unwrap();
    assert!(again.damage().is_none(), "the fresh file opens cleanly");
}

#[test]
fn flipped_bytes_and_garbage_are_set_aside_and_counted_as_damage() {
    for case in ["flipped", "garbage"] {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 20);
        let mut bytes = std::fs::read(&path).unwrap();
        if case == "flipped" {
            // The header and the first pages: where redb's own structures live.
            for byte in bytes.iter_mut().take(8192).step_by(7) {
                *byte ^= 0xa5;
            }
        } else {
            bytes = b"this is not a redb file at all\n".repeat(100);
        }
        std::fs::write(&path, &bytes).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap_or_else(|e| panic!("{case}: {e}"));
        let damage = outbox
            .damage()
            .unwrap_or_else(|| panic!("{case}: not reported"));
        eprintln!("{case}: {damage:?}");
        assert!(damage.aside.is_some(), "{case}");
        assert_eq!(
            std::fs::read(damage.aside.as_ref().unwrap()).unwrap(),
            bytes,
            "{case}: kept as it was"
        );
        assert!(
            outbox.is_empty().unwrap() || damage.salvaged.is_some(),
            "{case}"
        );
    }
}

#[test]
fn an_intact_file_left_by_a_crash_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 5);
    let outbox = Outbox::open(dir.path()).unwrap();
    assert!(outbox.damage().is_none());
    assert_eq!(outbox.pending("hook").unwrap().len(), 5);
    assert!(aside_files(dir.path()).is_empty());
}

#[test]
fn a_zero_length_file_is_reported_not_taken_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("outbox.redb"), b"").unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let damage = outbox.damage().expect("reported");
    assert!(damage.cause.contains("empty"), "{damage:?}");
    assert_eq!(damage.salvaged, None, "nothing could be counted");
}

#[test]
fn a_file_in_use_by_another_agent_is_an_error_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let first = Outbox::open(dir.path()).unwrap();
    let err = Outbox::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("open"), "{err}");
    assert!(aside_files(dir.path()).is_empty(), "never moved aside");
    drop(first);
}

#[test]
fn dead_letters_leave_by_age_then_by_share_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let day = 24 * 3600 * 1000u64;
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| body("peer", i)).collect();
    let size = bodies[0].len() as u64;
    let incoming: Vec<Incoming> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Incoming {
            body: b,
            identifier: "peer",
            created_ms: 0,
            webhooks: vec![if i % 2 == 0 { "a" } else { "b" }],
        })
        .collect();
    let seqs = outbox.append(&incoming).seqs;
    outbox.bury("a", &seqs, "HTTP 400").unwrap();
    outbox.bury("b", &seqs, "HTTP 400").unwrap();
    assert_eq!(
        outbox.dead("a").unwrap().len() + outbox.dead("b").unwrap().len(),
        10
    );
    // Every body says 2026-01-01: at 2026-01-09 they are 8 days old.
    let created = outbox.dead("a").unwrap()[0].0.created_ms;
    let rule = retention::Retention {
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: u64::MAX,
    };
    let young = outbox
        .expire_dead(&["a", "b"], rule, created + day)
        .unwrap();
    assert!(young.is_empty(), "{young:?}");
    // Share first: room for 3 of them; the oldest (lowest sequence) go.
    let rule = retention::Retention {
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 3 * size,
    };
    let forgotten = outbox
        .expire_dead(&["a", "b"], rule, created + day)
        .unwrap();
    let total: u64 = forgotten.values().sum();
    assert_eq!(total, 7);
    assert!(forgotten
        .keys()
        .all(|(_, why)| *why == retention::Expiry::Share));
    let left: Vec<u64> = ["a", "b"]
        .iter()
        .flat_map(|w| outbox.dead(w).unwrap())
        .map(|(s, _)| s.seq)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(
        left.iter().all(|s| *s > seqs[6]),
        "the newest stay: {left:?}"
    );
    let forgotten = outbox
        .expire_dead(&["a", "b"], rule, created + 8 * day)
        .unwrap();
    assert_eq!(forgotten.values().sum::<u64>(), 3);
    assert!(forgotten
        .keys()
        .all(|(_, why)| *why == retention::Expiry::Age));
    assert!(
        outbox.is_empty().unwrap(),
        "forgotten dead letters free their events"
    );
}

#[test]
fn salvage_reads_back_every_event_with_its_webhooks_from_a_readable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 30);
    {
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.ack("hook", &[1, 2]).unwrap();
        outbox.bury("hook", &[3], "HTTP 400").unwrap();
    }
    let rows = recover::salvage(&path).expect("a readable file is salvaged");
    assert_eq!(rows.len(), 28);
    assert_eq!(rows[0].seq, 3);
    assert_eq!(rows[0].dead, [("hook".to_owned(), "HTTP 400".to_owned())]);
    assert!(rows[1..].iter().all(|r| r.pending == ["hook"]));
    assert_eq!(store::head(&rows[5].body).0, "peer");
    assert!(path.exists(), "the file itself is left as it was");
}
