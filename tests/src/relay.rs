//! A UDP relay between two WireGuard peers (each peer's endpoint is the relay): it
//! delays every datagram by a fixed time, can hold back chosen data messages from the
//! first side so that they arrive after the next one, and records what it did (the
//! number of swaps, and how long each datagram really spent in it).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use crate::netns::{NetNs, Veth};
use crate::unique_octet;
use crate::wireguard::WgDevice;

/// What the relay does to the traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayOptions {
    /// Every datagram, both ways, is sent this long after it arrived.
    pub delay: Duration,
    /// Every Nth data message from the first side is held back and sent right after
    /// the next one (`None`: no reordering).
    pub swap_every: Option<u64>,
    /// Every Nth data message from the first side is dropped (`None`: no loss).
    pub drop_every: Option<u64>,
}

/// How long a held-back message waits for a successor before it goes alone.
const HOLD_AT_MOST: Duration = Duration::from_millis(60);

/// One datagram's passage: WireGuard message type, direction and time in the relay.
#[derive(Clone, Copy, Debug)]
pub struct Passage {
    /// First payload byte.
    pub kind: u8,
    /// From the first side to the second.
    pub forward: bool,
    /// Arrival to send.
    pub held: Duration,
}

#[derive(Default)]
struct Record {
    swapped: AtomicU64,
    dropped: AtomicU64,
    passages: Mutex<Vec<Passage>>,
}

/// A running relay; stops on drop.
pub struct Relay {
    /// The address the first side sends to (its peer's endpoint).
    pub first_side: SocketAddr,
    /// The address the second side sends to.
    pub second_side: SocketAddr,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Binds `first_side` and `second_side` in `ns`: what arrives on the first is
    /// sent from the second to `second_peer`, and the other way round to `first_peer`.
    pub fn start(
        ns: &NetNs,
        first_side: SocketAddr,
        second_side: SocketAddr,
        first_peer: SocketAddr,
        second_peer: SocketAddr,
        options: RelayOptions,
    ) -> Self {
        let (one, two) = {
            let _inside = ns.enter();
            (
                UdpSocket::bind(first_side).expect("binding the relay's first side"),
                UdpSocket::bind(second_side).expect("binding the relay's second side"),
            )
        };
        let record = Arc::new(Record::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to, peer, forward) in [
            (&one, &two, second_peer, true),
            (&two, &one, first_peer, false),
        ] {
            let from = from.try_clone().expect("cloning a socket");
            let to = to.try_clone().expect("cloning a socket");
            let (queue, pending) = mpsc::channel::<(Instant, Instant, Vec<u8>)>();
            let sender_record = Arc::clone(&record);
            threads.push(std::thread::spawn(move || {
                // FIFO with one fixed delay: the queue is in deadline order.
                for (arrived, due, datagram) in pending {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = to.send_to(&datagram, peer);
                    sender_record.passages.lock().unwrap().push(Passage {
                        kind: datagram.first().copied().unwrap_or(0),
                        forward,
                        held: arrived.elapsed(),
                    });
                }
            }));
            let stop = Arc::clone(&stop);
            let record = Arc::clone(&record);
            threads.push(std::thread::spawn(move || {
                receive(&from, &queue, &stop, &record, forward, options);
            }));
        }
        Self {
            first_side,
            second_side,
            record,
            stop,
            threads,
        }
    }

    /// Data messages that were sent after their successor.
    pub fn swapped(&self) -> u64 {
        self.record.swapped.load(Ordering::SeqCst)
    }

    /// Data messages dropped on purpose.
    pub fn dropped(&self) -> u64 {
        self.record.dropped.load(Ordering::SeqCst)
    }

    /// Every datagram's passage so far.
    pub fn passages(&self) -> Vec<Passage> {
        self.record.passages.lock().unwrap().clone()
    }
}

/// The receiving loop of one direction.
fn receive(
    from: &UdpSocket,
    queue: &mpsc::Sender<(Instant, Instant, Vec<u8>)>,
    stop: &AtomicBool,
    record: &Record,
    forward: bool,
    options: RelayOptions,
) {
    from.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("a read timeout");
    let mut buffer = vec![0u8; 65536];
    let mut data_seen = 0u64;
    let mut held: Option<(Instant, Vec<u8>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let received = from.recv_from(&mut buffer);
        let now = Instant::now();
        if let Some((since, _)) = &held {
            if now.duration_since(*since) >= HOLD_AT_MOST {
                let (since, datagram) = held.take().expect("held");
                let _ = queue.send((since, since + options.delay, datagram));
            }
        }
        let Ok((len, _)) = received else {
            continue;
        };
        let datagram = buffer[..len].to_vec();
        let is_data = datagram.first() == Some(&4);
        if forward && is_data {
            data_seen += 1;
            if options
                .drop_every
                .is_some_and(|every| data_seen.is_multiple_of(every))
            {
                record.dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if let Some(every) = options.swap_every {
                if held.is_none() && data_seen.is_multiple_of(every) {
                    held = Some((now, datagram));
                    continue;
                }
            }
        }
        let _ = queue.send((now, now + options.delay, datagram));
        if is_data {
            if let Some((since, earlier)) = held.take() {
                let _ = queue.send((since, now + options.delay, earlier));
                record.swapped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Namespaces A, R and B: A - R on one veth, R - B on another, the relay in R, each
/// WireGuard device's peer endpoint at the relay.
pub struct Relayed {
    /// A's device.
    pub wg_a: WgDevice,
    /// B's device.
    pub wg_b: WgDevice,
    /// The relay in R.
    pub relay: Relay,
    /// The veth between A and R.
    pub link_ar: Veth,
    /// The veth between R and B.
    pub link_rb: Veth,
    /// The relay's namespace.
    pub r: NetNs,
    /// Namespace A.
    pub a: NetNs,
    /// Namespace B.
    pub b: NetNs,
    /// B's tunnel address.
    pub tunnel_b: IpAddr,
}

impl Relayed {
    /// Builds the three namespaces, both devices and the relay with `options`.
    pub fn new(options: RelayOptions) -> Self {
        let a = NetNs::new("wra");
        let r = NetNs::new("wrr");
        let b = NetNs::new("wrb");
        let t = unique_octet();
        let link_ar = Veth::connect(&a, &r, t, 1);
        let link_rb = Veth::connect(&r, &b, t, 2);
        let tunnel_a = format!("10.{t}.0.1");
        let tunnel_b = format!("10.{t}.0.2");
        let wg_a = WgDevice::start(&a, "wra", 51821, &[format!("{tunnel_a}/24")]);
        let wg_b = WgDevice::start(&b, "wrb", 51820, &[format!("{tunnel_b}/24")]);
        let relay = Relay::start(
            &r,
            SocketAddr::new(link_ar.b.v4.into(), 40001),
            SocketAddr::new(link_rb.a.v4.into(), 40002),
            SocketAddr::new(link_ar.a.v4.into(), wg_a.port),
            SocketAddr::new(link_rb.b.v4.into(), wg_b.port),
            options,
        );
        wg_a.set_peer(
            &wg_b.keys.public,
            Some(relay.first_side),
            &format!("{tunnel_b}/32"),
        );
        wg_b.set_peer(
            &wg_a.keys.public,
            Some(relay.second_side),
            &format!("{tunnel_a}/32"),
        );
        Self {
            wg_a,
            wg_b,
            relay,
            link_ar,
            link_rb,
            r,
            a,
            b,
            tunnel_b: tunnel_b.parse::<IpAddr>().unwrap(),
        }
    }
}
