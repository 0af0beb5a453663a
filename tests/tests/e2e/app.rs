//! The whole agent in-process, wired by `wgpulse::app` exactly as `wgpulse run` wires
//! it (delivery, event queue and writer, pipeline, metrics, listener): a connect from
//! real WireGuard reaches a real webhook receiver, `/metrics` serves the peer, and
//! stopping detaches and saves in order.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use wgpulse_tests::receiver::Receiver;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic};

#[test]
fn the_wired_app_delivers_a_connect_serves_metrics_and_stops_in_order() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state = tempfile::tempdir().unwrap();
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    let text = format!(
        "node = \"app-test\"\nstate_dir = {:?}\ninterfaces = [{:?}]\ndevices = [{:?}]\ndrain_interval = \"200ms\"\nrefresh_interval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[[webhooks]]\nname = \"hook\"\nurl = \"{}\"\nevents = [\"peer_metric.connect\"]\n",
        state.path().display().to_string(),
        pair.link.b.name,
        pair.wg_b.name,
        receiver.url()
    );
    let config = wgpulse::config::Config::parse(&text, Path::new("app.toml")).unwrap();
    let app = {
        let _inside = pair.b.enter();
        wgpulse::app::start(&config).expect("starting the app")
    };
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 2);
    let requests = receiver.wait_for(1, Duration::from_secs(15));
    let connect = requests[0].json();
    assert_eq!(connect["event"], "connect");
    assert_eq!(connect["identifier"], pair.wg_a.keys.public.as_str());
    assert_eq!(connect["node"], "app-test");

    let addr = app.server_addr().expect("listening");
    let exposition = {
        let _inside = pair.b.enter();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    assert!(exposition.starts_with("HTTP/1.1 200"), "{exposition}");
    assert!(exposition.contains(&format!(
        "wireguard_peer_connected{{device=\"{}\",public_key=\"{}\"}} 1",
        pair.wg_b.name, pair.wg_a.keys.public
    )));
    app.stop();
    let saved = std::fs::read_to_string(state.path().join("peers.json")).unwrap();
    assert!(
        saved.contains(&pair.wg_a.keys.public),
        "the state was saved at stop"
    );
}
