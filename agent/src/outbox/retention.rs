//! Dead-letter retention: dead letters are kept to be listed and replayed, but not
//! forever and not at the expense of live events. Those older than
//! `outbox.dead_letter_max_age` go; then, while all dead letters together exceed
//! `outbox.dead_letter_max_share` of `outbox.max_bytes`, the oldest go. Each one
//! forgotten is counted by webhook and reason.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Outbox, OutboxError, Stored};

/// Why dead letters were forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiry {
    /// Older than the maximum age.
    Age,
    /// Dead letters took more than their share of the outbox.
    Share,
}

impl Expiry {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Expiry::Age => "age",
            Expiry::Share => "share",
        }
    }
}

/// The retention rule.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Oldest a dead letter may be.
    pub max_age: Duration,
    /// Most bytes all dead letters together may take.
    pub max_bytes: u64,
}

/// Dead letters forgotten, by (webhook, reason).
pub type Forgotten = BTreeMap<(String, Expiry), u64>;

impl Outbox {
    /// Applies `rule` to the dead letters of `webhooks` at `now_ms` (Unix ms).
    pub fn expire_dead(
        &self,
        webhooks: &[&str],
        rule: Retention,
        now_ms: u64,
    ) -> Result<Forgotten, OutboxError> {
        let mut forgotten = Forgotten::new();
        let mut kept: Vec<(&str, Stored)> = Vec::new();
        for webhook in webhooks {
            let mut expired = Vec::new();
            for (stored, _) in self.dead(webhook)? {
                if now_ms.saturating_sub(stored.created_ms) > rule.max_age.as_millis() as u64 {
                    expired.push(stored.seq);
                } else {
                    kept.push((webhook, stored));
                }
            }
            if !expired.is_empty() {
                self.forget_dead(webhook, &expired)?;
                forgotten.insert(((*webhook).to_owned(), Expiry::Age), expired.len() as u64);
            }
        }
        let mut total: u64 = kept.iter().map(|(_, s)| s.size as u64).sum();
        if total <= rule.max_bytes {
            return Ok(forgotten);
        }
        kept.sort_by_key(|(_, s)| (s.created_ms, s.seq));
        let mut over: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (webhook, stored) in kept {
            if total <= rule.max_bytes {
                break;
            }
            total -= stored.size as u64;
            over.entry(webhook).or_default().push(stored.seq);
        }
        for (webhook, seqs) in over {
            self.forget_dead(webhook, &seqs)?;
            *forgotten
                .entry((webhook.to_owned(), Expiry::Share))
                .or_default() += seqs.len() as u64;
        }
        Ok(forgotten)
    }
}
