//! Each dialect's translation of a real example of every event.

use serde_json::{json, Value};

use super::*;
use crate::events::samples::samples;

fn sample(kind: &str) -> Value {
    let event = samples("gw-1")
        .into_iter()
        .find(|e| e.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind} sample"));
    serde_json::to_value(event).unwrap()
}

fn encode(dialect: Dialect, shape: Shape, events: &[Value]) -> (Value, Vec<(String, String)>) {
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let encoded = Encoder::new(dialect, shape, Default::default(), None).encode(&refs);
    (
        serde_json::from_slice(&encoded.body).unwrap(),
        encoded.headers,
    )
}

#[test]
fn wgpulse_single_passes_the_stored_bytes_and_batches_are_arrays() {
    let connect = sample("peer_metric.connect");
    let stored = serde_json::to_vec(&connect).unwrap();
    let encoder = Encoder::new(Dialect::Wgpulse, Shape::One, Default::default(), None);
    let encoded = encoder.encode(&[&stored]);
    assert_eq!(encoded.body, stored, "no re-serialization");
    assert_eq!(
        encoded.headers,
        [("X-Wgpulse-Event".into(), "peer_metric.connect".into())]
    );
    let (body, _) = encode(Dialect::Wgpulse, Shape::List, &[connect.clone(), connect]);
    assert_eq!(body.as_array().unwrap().len(), 2);
}

#[test]
fn wg_portal_v2_is_the_shell_exactly_and_v1_the_flat_status_on_entity_peer() {
    let (body, _) = encode(
        Dialect::WgPortal,
        Shape::One,
        &[sample("peer_metric.connect")],
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["entity", "event", "identifier", "payload"]);
    assert_eq!(body["entity"], "peer_metric");
    assert_eq!(body["payload"]["Status"]["IsConnected"], true);
    let (v1, _) = encode(
        Dialect::WgPortalV1,
        Shape::One,
        &[sample("peer_metric.connect")],
    );
    assert_eq!(v1["entity"], "peer");
    assert_eq!(v1["event"], "connect");
    let payload = v1["payload"].as_object().unwrap();
    for field in [
        "PeerId",
        "IsConnected",
        "IsPingable",
        "LastPing",
        "BytesReceived",
        "BytesTransmitted",
        "LastHandshake",
        "Endpoint",
        "LastSessionStart",
    ] {
        assert!(payload.contains_key(field), "{field}");
    }
    assert_eq!(v1["payload"]["PeerId"], v1["identifier"]);
    assert_eq!(v1["payload"]["BytesReceived"], 1860);
}

#[test]
fn defguard_names_triggers_in_its_style_and_sends_the_entity_itself() {
    for (kind, trigger) in [
        ("peer.create", "peer_created"),
        ("peer.update", "peer_modified"),
        ("peer.delete", "peer_deleted"),
        ("peer_metric.connect", "peer_connected"),
        ("peer_metric.disconnect", "peer_disconnected"),
        ("peer_metric.handshake", "peer_handshake"),
        ("interface.create", "interface_created"),
        ("interface.update", "interface_modified"),
        ("interface.delete", "interface_deleted"),
        ("alert.invalid_flood", "alert_invalid_flood"),
        ("test.test", "test"),
    ] {
        let (body, headers) = encode(Dialect::Defguard, Shape::One, &[sample(kind)]);
        assert_eq!(
            headers,
            [("X-Defguard-Event".into(), trigger.into())],
            "{kind}"
        );
        assert!(
            body.get("payload").is_none() && body.get("entity").is_none(),
            "no shell: {body}"
        );
    }
    let (body, _) = encode(Dialect::Defguard, Shape::One, &[sample("peer.update")]);
    assert_eq!(body["changed_fields"], json!(["Endpoint"]));
    assert_eq!(body["previous"]["Endpoint"], "192.0.2.7:51820");
    assert_eq!(body["endpoint"], "198.51.100.7:40000");
}

#[test]
fn procustodibus_gets_resources_with_its_attribute_names() {
    let events = [
        sample("peer_metric.handshake"),
        sample("alert.invalid_flood"),
        sample("peer.update"),
        sample("peer.create"),
        sample("peer.delete"),
        sample("peer_metric.connect"),
    ];
    let (body, _) = encode(Dialect::Procustodibus, Shape::List, &events);
    let list = body.as_array().unwrap();
    let stats = &list[0];
    assert_eq!(stats["type"], "endpoint_stats");
    for attribute in [
        "created",
        "handshake",
        "ip",
        "port",
        "rx_delta",
        "rx_total",
        "tx_delta",
        "tx_total",
    ] {
        assert!(stats["attributes"].get(attribute).is_some(), "{attribute}");
    }
    assert_eq!(stats["attributes"]["ip"], "192.0.2.7");
    assert_eq!(
        stats["relationships"]["endpoint"]["data"][0]["type"],
        "endpoints"
    );
    let alert = &list[1];
    assert_eq!(alert["type"], "alerts");
    assert_eq!(alert["attributes"]["danger"], 5);
    assert_eq!(alert["attributes"]["params"]["InvalidPackets"], 300);
    assert_eq!(alert["attributes"]["type"], "invalid_flood");
    // The roam moved both the IP and the port: two changes.
    let changes: Vec<&Value> = list.iter().filter(|r| r["type"] == "log_changes").collect();
    assert_eq!(changes[0]["attributes"]["field"], "ip");
    assert_eq!(changes[0]["attributes"]["old_value"], "192.0.2.7");
    assert_eq!(changes[0]["attributes"]["new_value"], "198.51.100.7");
    assert_eq!(changes[1]["attributes"]["field"], "port");
    assert_eq!(changes[1]["attributes"]["old_value"], 51820);
    assert_eq!(changes[2]["attributes"]["old_value"], Value::Null, "added");
    assert_eq!(
        changes[3]["attributes"]["new_value"],
        Value::Null,
        "removed"
    );
    assert_eq!(changes[4]["attributes"]["field"], "connected");
    assert_eq!(changes[4]["attributes"]["new_value"], true);
}

#[test]
fn vpn_enterprise_and_standard_webhooks_shapes() {
    let (body, _) = encode(
        Dialect::VpnEnterprise,
        Shape::One,
        &[sample("peer_metric.connect")],
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["created_at", "data", "id", "type"]);
    assert_eq!(body["type"], "vpn.connected");
    assert_eq!(body["data"]["Status"]["IsConnected"], true);
    for (kind, name) in [
        ("interface.create", "vpn.server.created"),
        ("interface.delete", "vpn.server.deleted"),
        ("peer_metric.disconnect", "vpn.disconnected"),
        ("test.test", "webhook.test"),
    ] {
        let (body, _) = encode(Dialect::VpnEnterprise, Shape::One, &[sample(kind)]);
        assert_eq!(body["type"], name);
    }
    let (body, _) = encode(
        Dialect::StandardWebhooks,
        Shape::One,
        &[sample("peer.delete")],
    );
    assert_eq!(body["type"], "peer.delete");
    assert!(body["timestamp"].is_string() && body["data"].is_object());
}

#[test]
fn chat_messages_are_one_readable_line_per_event_within_discords_limit() {
    let (body, _) = encode(Dialect::Slack, Shape::One, &[sample("peer_metric.connect")]);
    let key = sample("peer_metric.connect")["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        body["text"],
        format!("peer {}… connected from 192.0.2.7:51820 on wg0", &key[..8])
    );
    let many: Vec<Value> = (0..100).map(|_| sample("peer.update")).collect();
    let (body, _) = encode(Dialect::Discord, Shape::List, &many);
    let content = body["content"].as_str().unwrap();
    assert!(
        content.chars().count() <= chat::DISCORD_LIMIT,
        "{}",
        content.len()
    );
    assert!(content.contains("more"), "{content}");
}

#[test]
fn extra_fields_are_added_to_every_event_body() {
    let extra: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"tenant": "blue", "site": 7})).unwrap();
    let bodies = [serde_json::to_vec(&sample("peer.create")).unwrap()];
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    for dialect in [
        Dialect::Wgpulse,
        Dialect::WgPortal,
        Dialect::Defguard,
        Dialect::VpnEnterprise,
    ] {
        let encoded = Encoder::new(dialect, Shape::One, extra.clone(), None).encode(&refs);
        let body: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(body["tenant"], "blue", "{dialect:?}");
        assert_eq!(body["site"], 7, "{dialect:?}");
    }
    let encoded = Encoder::new(Dialect::Procustodibus, Shape::List, extra, None).encode(&refs);
    let body: Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(body[0]["tenant"], "blue");
}

#[test]
fn templates_render_the_context_and_bad_ones_name_the_line() {
    let template = template::Template::new(
        "{\"chat_id\": 42,\n \"text\": {{ text | tojson }},\n \"node\": \"{{ node }}\"}".into(),
        "application/json".into(),
    )
    .unwrap();
    let connect = sample("peer_metric.connect");
    let body: Value =
        serde_json::from_str(&template.render(&connect, &Default::default()).unwrap()).unwrap();
    assert_eq!(body["node"], "gw-1");
    assert!(body["text"].as_str().unwrap().contains("connected from"));
    let err = template::Template::new("ok\n{{ broken ".into(), "text/plain".into()).unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    let strict =
        template::Template::new("{{ payload.Status.Endpoint }}".into(), "text/plain".into())
            .unwrap();
    let (kind, err) = strict
        .check(&[connect, sample("peer.create")], &Default::default())
        .unwrap_err();
    assert_eq!(kind, "peer.create", "{err}");
}
