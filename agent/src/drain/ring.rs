//! The session ring buffer: completed handshakes and endpoint changes, decoded as soon
//! as they arrive, duplicates (the same completed session seen twice) dropped.

use std::time::Instant;

use agent_common::{
    SessionEvent, EVENT_ENDPOINT_CHANGED, EVENT_HANDSHAKE_COMPLETE, ROLE_INITIATOR, ROLE_RESPONDER,
};

use super::{Drain, NOTICE_DEDUP_WINDOW};
use crate::snapshot::{BootClock, Endpoint, Role, SessionNotice};

impl Drain {
    /// Every record waiting in the ring buffer, decoded, duplicates dropped.
    pub fn read_notices(&mut self) -> Vec<SessionNotice> {
        let clock = BootClock::now();
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<SessionEvent>() {
                // SAFETY: the datapath writes whole `SessionEvent` records.
                let record: SessionEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SessionEvent) };
                records.push(record);
            }
        }
        let now = Instant::now();
        self.completed
            .retain(|_, seen| now.duration_since(*seen) < NOTICE_DEDUP_WINDOW);
        records
            .into_iter()
            .filter_map(|record| {
                if record.kind == EVENT_HANDSHAKE_COMPLETE
                    && self
                        .completed
                        .insert((record.endpoint.device, record.local_index), now)
                        .is_some()
                {
                    return None;
                }
                decode_notice(&record, &clock)
            })
            .collect()
    }
}

pub(super) fn decode_notice(record: &SessionEvent, clock: &BootClock) -> Option<SessionNotice> {
    let endpoint = Endpoint::from_key(&record.endpoint)?;
    let at = clock.wall(record.timestamp_ns)?;
    match record.kind {
        EVENT_HANDSHAKE_COMPLETE => Some(SessionNotice::HandshakeComplete {
            endpoint,
            role: match record.role {
                ROLE_INITIATOR => Role::Initiator,
                ROLE_RESPONDER => Role::Responder,
                _ => return None,
            },
            at,
            local_index: record.local_index,
            remote_index: record.remote_index,
            rtt: (record.rtt_ns > 0).then(|| std::time::Duration::from_nanos(record.rtt_ns)),
        }),
        EVENT_ENDPOINT_CHANGED => Some(SessionNotice::EndpointChanged {
            previous: Endpoint::from_key(&record.previous)?,
            endpoint,
            at,
            local_index: record.local_index,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::EndpointKey;

    #[test]
    fn notices_decode_roles_and_reject_garbage() {
        let clock = BootClock::now();
        let mut record = SessionEvent {
            kind: EVENT_HANDSHAKE_COMPLETE,
            role: ROLE_RESPONDER,
            timestamp_ns: clock.boot_ns(),
            local_index: 7,
            remote_index: 9,
            endpoint: Endpoint {
                device: 1,
                addr: "10.0.0.1:51820".parse().unwrap(),
            }
            .to_key(),
            previous: EndpointKey::default(),
            rtt_ns: 1_500_000,
        };
        match decode_notice(&record, &clock) {
            Some(SessionNotice::HandshakeComplete {
                role,
                local_index,
                rtt,
                ..
            }) => {
                assert_eq!(role, Role::Responder);
                assert_eq!(local_index, 7);
                assert_eq!(rtt, Some(std::time::Duration::from_micros(1500)));
            }
            other => panic!("unexpected {other:?}"),
        }
        record.role = 77;
        assert_eq!(decode_notice(&record, &clock), None);
        record.kind = EVENT_ENDPOINT_CHANGED;
        // previous is the zero key (family 0): not decodable.
        assert_eq!(decode_notice(&record, &clock), None);
    }
}
