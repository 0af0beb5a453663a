//! `wg show <dev> dump` parsed: WireGuard's own view of a device and its peers.
//! The device's private key (first field of the dump) is never kept.

use std::net::SocketAddr;

/// A device as `wg show <dev> dump` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgDump {
    /// The device's base64 public key.
    pub public_key: String,
    /// UDP listen port.
    pub listen_port: u16,
    /// Firewall mark (`None` when off).
    pub fwmark: Option<u32>,
    /// Its peers, in the order `wg` lists them.
    pub peers: Vec<DumpPeer>,
}

/// One peer line of `wg show <dev> dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPeer {
    /// Base64 public key.
    pub public_key: String,
    /// Current endpoint, if any.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs as `wg` prints them (`10.0.0.2/32`), empty for none.
    pub allowed_ips: Vec<String>,
    /// Latest handshake, Unix seconds (0: never).
    pub latest_handshake: u64,
    /// Bytes WireGuard accepted from the peer.
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds (`None`: off).
    pub keepalive: Option<u16>,
}

impl WgDump {
    /// Parses the text of `wg show <dev> dump` for a single device; panics with the
    /// offending line if it is not in the expected format.
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let head = lines.next().expect("wg show dump printed nothing");
        let f: Vec<&str> = head.split('\t').collect();
        // Index 0 is the private key: deliberately skipped, and never echoed.
        assert_eq!(
            f.len(),
            4,
            "unexpected device line in wg show dump ({} fields)",
            f.len()
        );
        let number = |field: &str, what: &str, line: &str| -> u64 {
            field
                .parse()
                .unwrap_or_else(|_| panic!("bad {what} {field:?} in wg show dump line {line:?}"))
        };
        Self {
            public_key: f[1].to_owned(),
            listen_port: number(f[2], "listen port", "(device line)") as u16,
            fwmark: match f[3] {
                "off" => None,
                mark => Some(
                    u32::from_str_radix(mark.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|_| panic!("bad fwmark {mark:?} in wg show dump")),
                ),
            },
            peers: lines
                .map(|line| {
                    let f: Vec<&str> = line.split('\t').collect();
                    assert_eq!(f.len(), 8, "unexpected peer line in wg show dump: {line:?}");
                    DumpPeer {
                        public_key: f[0].to_owned(),
                        endpoint: match f[2] {
                            "(none)" => None,
                            e => Some(e.parse().unwrap_or_else(|_| {
                                panic!("bad endpoint {e:?} in wg show dump line {line:?}")
                            })),
                        },
                        allowed_ips: match f[3] {
                            "(none)" => Vec::new(),
                            ips => ips.split(',').map(str::to_owned).collect(),
                        },
                        latest_handshake: number(f[4], "latest handshake", line),
                        rx_bytes: number(f[5], "rx bytes", line),
                        tx_bytes: number(f[6], "tx bytes", line),
                        keepalive: match f[7] {
                            "off" => None,
                            k => Some(number(k, "keepalive", line) as u16),
                        },
                    }
                })
                .collect(),
        }
    }

    /// The peer with this public key, if configured.
    pub fn peer(&self, public_key: &str) -> Option<&DumpPeer> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_peers() {
        let text = "cHJpdmF0ZQ==\tUEs=\t51820\toff\n\
                    QQ==\t(none)\t10.1.1.2:51821\t10.9.0.2/32,fd10::2/128\t1700000000\t1234\t5678\t25\n\
                    Qg==\t(none)\t[fd00:1:1::2]:51820\t(none)\t0\t0\t0\toff\n";
        let dump = WgDump::parse(text);
        assert_eq!(dump.public_key, "UEs=");
        assert_eq!(dump.listen_port, 51820);
        assert_eq!(dump.fwmark, None);
        let a = dump.peer("QQ==").unwrap();
        assert_eq!(a.endpoint, Some("10.1.1.2:51821".parse().unwrap()));
        assert_eq!(a.allowed_ips, ["10.9.0.2/32", "fd10::2/128"]);
        assert_eq!(
            (a.latest_handshake, a.rx_bytes, a.tx_bytes),
            (1_700_000_000, 1234, 5678)
        );
        assert_eq!(a.keepalive, Some(25));
        let b = dump.peer("Qg==").unwrap();
        assert_eq!(b.endpoint, Some("[fd00:1:1::2]:51820".parse().unwrap()));
        assert!(b.allowed_ips.is_empty());
        assert_eq!(b.keepalive, None);
        assert!(
            !format!("{dump:?}").contains("cHJpdmF0ZQ"),
            "private key kept"
        );
    }
}
