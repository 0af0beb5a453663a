//! The memory tier: events accepted while the disk could not be written (full,
//! failing), under the same sequence numbers they will have on disk. Lanes load,
//! deliver, acknowledge and bury them here exactly as stored ones, so a full disk
//! delays nothing; they are written to disk (with only the webhooks still waiting
//! for them) as soon as it works again. Bounded: beyond its limit the oldest are
//! dropped, and whoever still wanted them is told.

use std::collections::BTreeMap;

use super::Stored;

/// One event held in memory.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub body: Vec<u8>,
    pub identifier: String,
    pub created_ms: u64,
    /// Webhooks that still have to deliver it.
    pub pending: Vec<String>,
    /// Webhooks that gave up on it, with the reason.
    pub dead: Vec<(String, String)>,
}

impl Held {
    /// The row that writes it to disk under `seq`.
    pub fn row(&self, seq: u64) -> super::store::Row<'_> {
        super::store::Row {
            seq,
            body: &self.body,
            pending: self.pending.iter().map(String::as_str).collect(),
            dead: self
                .dead
                .iter()
                .map(|(w, r)| (w.as_str(), r.as_str()))
                .collect(),
        }
    }

    fn referenced(&self) -> bool {
        !self.pending.is_empty() || !self.dead.is_empty()
    }

    fn stored(&self, seq: u64) -> Stored {
        Stored {
            seq,
            identifier: self.identifier.clone(),
            created_ms: self.created_ms,
            size: self.body.len(),
        }
    }
}

/// The held events, by sequence number.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    events: BTreeMap<u64, Held>,
    bytes: u64,
}

impl Overlay {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.events.contains_key(&seq)
    }

    /// Holds an event; beyond `limit` events the oldest go. Returns, per webhook,
    /// how many events it lost that way.
    pub fn hold(&mut self, seq: u64, held: Held, limit: usize) -> Vec<(String, u64)> {
        if !held.referenced() {
            return Vec::new();
        }
        self.bytes += held.body.len() as u64;
        self.events.insert(seq, held);
        let mut lost: BTreeMap<String, u64> = BTreeMap::new();
        while self.events.len() > limit {
            let Some((_, oldest)) = self.events.pop_first() else {
                break;
            };
            self.bytes -= oldest.body.len() as u64;
            for webhook in oldest.pending {
                *lost.entry(webhook).or_default() += 1;
            }
        }
        lost.into_iter().collect()
    }

    /// Every held event, oldest first (to write them to disk).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Held)> {
        self.events.iter().map(|(seq, held)| (*seq, held))
    }

    /// Forgets everything (it was written to disk).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }

    /// The bodies of the held ones among `seqs`.
    pub fn load(&self, seqs: &[u64], out: &mut Vec<(u64, Vec<u8>)>) {
        for seq in seqs {
            if let Some(held) = self.events.get(seq) {
                out.push((*seq, held.body.clone()));
            }
        }
    }

    /// A webhook delivered (`dead: false`) or forgot a dead letter (`dead: true`)
    /// of these held events; an event nobody references any more goes. Returns the
    /// sequence numbers that were not held here.
    pub fn release(&mut self, webhook: &str, seqs: &[u64], dead: bool) -> Vec<u64> {
        let mut elsewhere = Vec::new();
        for seq in seqs {
            let Some(held) = self.events.get_mut(seq) else {
                elsewhere.push(*seq);
                continue;
            };
            if dead {
                held.dead.retain(|(w, _)| w != webhook);
            } else {
                held.pending.retain(|w| w != webhook);
            }
            if !held.referenced() {
                let gone = self.events.remove(seq).expect("present");
                self.bytes -= gone.body.len() as u64;
            }
        }
        elsewhere
    }

    /// Moves a webhook's pending held events to its dead letters; returns the
    /// sequence numbers that were not held here.
    pub fn bury(&mut self, webhook: &str, seqs: &[u64], reason: &str) -> Vec<u64> {
        let mut elsewhere = Vec::new();
        for seq in seqs {
            match self.events.get_mut(seq) {
                Some(held) => {
                    if held.pending.iter().any(|w| w == webhook) {
                        held.pending.retain(|w| w != webhook);
                        held.dead.push((webhook.to_owned(), reason.to_owned()));
                    }
                }
                None => elsewhere.push(*seq),
            }
        }
        elsewhere
    }

    /// A webhook's held pending events or dead letters (with reasons).
    pub fn listed(&self, webhook: &str, dead: bool) -> Vec<(Stored, String)> {
        self.events
            .iter()
            .filter_map(|(seq, held)| {
                if dead {
                    held.dead
                        .iter()
                        .find(|(w, _)| w == webhook)
                        .map(|(_, reason)| (held.stored(*seq), reason.clone()))
                } else {
                    held.pending
                        .iter()
                        .any(|w| w == webhook)
                        .then(|| (held.stored(*seq), String::new()))
                }
            })
            .collect()
    }

    /// Moves a webhook's held dead letters back to pending; returns them.
    pub fn replay(&mut self, webhook: &str) -> Vec<Stored> {
        let mut out = Vec::new();
        for (seq, held) in &mut self.events {
            let before = held.dead.len();
            held.dead.retain(|(w, _)| w != webhook);
            if held.dead.len() != before {
                held.pending.push(webhook.to_owned());
                out.push(held.stored(*seq));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(webhooks: &[&str]) -> Held {
        Held {
            body: vec![b'x'; 10],
            identifier: "peer".into(),
            created_ms: 0,
            pending: webhooks.iter().map(|w| (*w).to_owned()).collect(),
            dead: Vec::new(),
        }
    }

    #[test]
    fn held_events_are_released_per_webhook_and_bounded() {
        let mut overlay = Overlay::default();
        assert!(overlay.hold(1, held(&["a", "b"]), 2).is_empty());
        assert!(overlay.hold(2, held(&["a"]), 2).is_empty());
        assert_eq!(overlay.release("a", &[1, 9], false), [9]);
        assert!(overlay.contains(1), "b still wants it");
        assert_eq!(overlay.bury("b", &[1], "HTTP 400"), Vec::<u64>::new());
        assert_eq!(overlay.listed("b", true)[0].1, "HTTP 400");
        assert_eq!(overlay.replay("b").len(), 1);
        assert_eq!(overlay.listed("b", false).len(), 1);
        // A third event pushes the oldest out: b loses it.
        assert_eq!(overlay.hold(3, held(&["a"]), 2), [("b".to_owned(), 1)]);
        assert_eq!(overlay.len(), 2);
        assert_eq!(overlay.bytes(), 20);
        overlay.release("a", &[2, 3], false);
        assert!(overlay.is_empty());
        assert_eq!(overlay.bytes(), 0);
    }
}
