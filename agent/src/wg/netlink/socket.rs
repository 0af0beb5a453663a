//! A blocking netlink request/reply channel: send one request, collect its replies
//! (every part of a multipart dump, up to `NLMSG_DONE`), with a receive timeout.

use std::time::Duration;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_MULTIPART,
};
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

use super::NetlinkError;

/// How long the kernel may take to send the next part of a reply.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// A netlink socket of one protocol, connected to the kernel.
pub(super) struct Channel {
    socket: Socket,
    sequence: u32,
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> NetlinkError + '_ {
    move |source| NetlinkError::Io {
        op: op.to_owned(),
        source,
    }
}

impl Channel {
    /// Opens a socket of `protocol` (`NETLINK_GENERIC`, `NETLINK_ROUTE`) in the calling
    /// thread's network namespace.
    pub(super) fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(protocol).map_err(io("socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        let timeout = TimeVal::new(
            RECV_TIMEOUT.as_secs() as _,
            RECV_TIMEOUT.subsec_micros() as _,
        );
        setsockopt(&socket, ReceiveTimeout, &timeout)
            .map_err(|errno| io("set receive timeout")(errno.into()))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `payload` with `flags` and returns every reply message's payload.
    pub(super) fn request<S, T>(
        &mut self,
        payload: S,
        flags: u16,
        op: &str,
    ) -> Result<Vec<T>, NetlinkError>
    where
        S: NetlinkSerializable,
        T: NetlinkDeserializable,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buffer = vec![0u8; message.buffer_len()];
        message.serialize(&mut buffer);
        self.socket.send(&buffer, 0).map_err(io(op))?;

        let mut out = Vec::new();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let size = self.socket.recv(&mut &mut buffer[..], 0).map_err(io(op))?;
            let batch = parse_replies::<T>(&buffer[..size.min(buffer.len())], op)?;
            out.extend(batch.messages);
            if batch.complete {
                return Ok(out);
            }
        }
    }
}

/// The messages of one received datagram.
pub(super) struct Batch<T> {
    /// Payloads of the data messages, in order.
    pub(super) messages: Vec<T>,
    /// The reply is complete (`NLMSG_DONE`, an ACK, or a single non-multipart message).
    pub(super) complete: bool,
}

/// Decodes the netlink messages in one received datagram. A kernel error (also one
/// reported in `NLMSG_DONE`) becomes [`NetlinkError::Kernel`].
pub(super) fn parse_replies<T: NetlinkDeserializable>(
    mut datagram: &[u8],
    op: &str,
) -> Result<Batch<T>, NetlinkError> {
    let mut batch = Batch {
        messages: Vec::new(),
        complete: false,
    };
    while !datagram.is_empty() {
        let message =
            NetlinkMessage::<T>::deserialize(datagram).map_err(|e| NetlinkError::Decode {
                op: op.to_owned(),
                message: e.to_string(),
            })?;
        let length = message.header.length as usize;
        let multipart = message.header.flags & NLM_F_MULTIPART != 0;
        match message.payload {
            NetlinkPayload::Done(done) if done.code != 0 => {
                return Err(NetlinkError::Kernel {
                    op: op.to_owned(),
                    code: done.code,
                })
            }
            NetlinkPayload::Done(_) => batch.complete = true,
            NetlinkPayload::Error(error) => match error.code {
                Some(code) => {
                    return Err(NetlinkError::Kernel {
                        op: op.to_owned(),
                        code: code.get(),
                    })
                }
                None => batch.complete = true,
            },
            NetlinkPayload::InnerMessage(inner) => {
                batch.messages.push(inner);
                if !multipart {
                    batch.complete = true;
                }
            }
            _ => {}
        }
        let aligned = (length + 3) & !3;
        if length == 0 || aligned >= datagram.len() {
            break;
        }
        datagram = &datagram[aligned..];
    }
    Ok(batch)
}

/// Serializes messages the way the kernel sends a dump: each part `NLM_F_MULTIPART`,
/// then `NLMSG_DONE`, all in one datagram.
#[cfg(test)]
pub(super) fn dump_datagram<T: NetlinkSerializable>(parts: Vec<T>) -> Vec<u8> {
    use netlink_packet_core::DoneMessage;

    let mut datagram = Vec::new();
    let mut push = |mut message: NetlinkMessage<T>| {
        message.header.flags = NLM_F_MULTIPART;
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes.resize((bytes.len() + 3) & !3, 0);
        datagram.extend_from_slice(&bytes);
    };
    for part in parts {
        push(NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(part),
        ));
    }
    push(NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::Done(DoneMessage::default()),
    ));
    datagram
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::RouteNetlinkMessage;

    #[test]
    fn error_in_done_is_a_kernel_error() {
        let mut datagram =
            dump_datagram(vec![RouteNetlinkMessage::NewLink(LinkMessage::default())]);
        // NLMSG_DONE is last: its payload starts with the (negative) error code.
        let code_at = datagram.len() - 4;
        datagram[code_at..].copy_from_slice(&(-libc::EMSGSIZE).to_ne_bytes());
        let err = parse_replies::<RouteNetlinkMessage>(&datagram, "dump links").err();
        assert!(
            matches!(err, Some(NetlinkError::Kernel { code, .. }) if code == -libc::EMSGSIZE),
            "{err:?}"
        );
    }

    #[test]
    fn a_dump_is_complete_only_at_done() {
        let parts = vec![RouteNetlinkMessage::NewLink(LinkMessage::default()); 3];
        let datagram = dump_datagram(parts);
        let batch = parse_replies::<RouteNetlinkMessage>(&datagram, "dump links").unwrap();
        assert_eq!(batch.messages.len(), 3);
        assert!(batch.complete);
        // Without the NLMSG_DONE part (20 bytes: header and code), more is to come.
        let cut = &datagram[..datagram.len() - 20];
        let batch = parse_replies::<RouteNetlinkMessage>(cut, "dump links").unwrap();
        assert_eq!(batch.messages.len(), 3);
        assert!(!batch.complete);
    }
}
