"""Webhook receivers written from each system's own documentation (../shared/seeds and
the vendors' docs), not from wgpulse's code: one route per receiver, each accepting
only what its documentation promises and answering 4xx otherwise. Every request and
its verdict is appended to a JSON-lines file for the test to read.

usage: dialects.py PORT LOG_FILE SECRETS_JSON
"""
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook  # the Standard Webhooks reference library

PORT, LOG, SECRETS = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])


# vpn-enterprise-webhooks.txt, "Python Example", verbatim.
def verify_webhook_signature(payload, signature, secret):
    expected_signature = hmac.new(
        secret.encode('utf-8'),
        payload,
        hashlib.sha256
    ).hexdigest()
    provided_signature = signature.replace('sha256=', '')
    return hmac.compare_digest(expected_signature, provided_signature)


WG_PORTAL_EVENTS = {"create", "update", "delete", "connect", "disconnect"}
V1_STATUS = ["PeerId", "IsConnected", "IsPingable", "LastPing", "BytesReceived",
             "BytesTransmitted", "LastHandshake", "Endpoint", "LastSessionStart"]
PRO_CUSTODIBUS = {
    "endpoint_stats": ["created", "handshake", "ip", "port", "rx_delta", "rx_total", "tx_delta", "tx_total"],
    "alerts": ["created", "danger", "params", "suppress_until", "type", "updated"],
    "log_changes": ["created", "field", "id", "new_value", "old_value", "type"],
}


def wg_portal(headers, body):
    # wg-portal-webhooks-v2.md: the shell, Authorization as the shared secret.
    if headers.get("Authorization") != SECRETS["wg-portal"]:
        return 401, "bad Authorization"
    event = json.loads(body)
    if sorted(event) != ["entity", "event", "identifier", "payload"]:
        return 400, "not the shell: %s" % sorted(event)
    if event["entity"] in ("peer", "peer_metric", "interface") and event["event"] not in WG_PORTAL_EVENTS | {"handshake"}:
        return 400, "unknown event"
    if event["entity"] == "peer_metric" and event["event"] in ("connect", "disconnect"):
        if not {"Status", "Peer"} <= set(event["payload"]):
            return 400, "peer_metric without Status and Peer"
    return 200, event["entity"] + "." + event["event"]


def wg_portal_v1(headers, body):
    # wg-portal-webhooks-v1.txt: connects and disconnects on entity "peer".
    event = json.loads(body)
    if event["event"] in ("connect", "disconnect"):
        if event["entity"] != "peer":
            return 400, "v1 connects are on entity peer"
        missing = [f for f in V1_STATUS if f not in event["payload"]]
        if missing:
            return 400, "missing %s" % missing
        if event["payload"]["PeerId"] != event["identifier"]:
            return 400, "PeerId"
    return 200, event["entity"] + "." + event["event"]


def defguard(headers, body):
    # defguard-webhooks.txt: the trigger in X-Defguard-Event, the token in
    # Authorization, the body the entity object itself.
    trigger = headers.get("X-Defguard-Event")
    if not trigger:
        return 400, "no X-Defguard-Event"
    if headers.get("Authorization") != SECRETS["defguard"]:
        return 401, "bad token"
    entity = json.loads(body)
    if not isinstance(entity, dict) or "payload" in entity or "entity" in entity:
        return 400, "a shell, not the entity"
    return 200, trigger


def procustodibus(headers, body):
    # procustodibus-webhooks.txt: a JSON list of resources with documented attributes.
    resources = json.loads(body)
    if not isinstance(resources, list) or not resources:
        return 400, "not a list"
    for resource in resources:
        wanted = PRO_CUSTODIBUS.get(resource.get("type"))
        if wanted is None or "id" not in resource:
            return 400, "unknown resource %r" % resource.get("type")
        missing = [a for a in wanted if a not in resource["attributes"]]
        if missing:
            return 400, "%s lacks %s" % (resource["type"], missing)
    return 200, ",".join(r["type"] for r in resources)


def vpn_enterprise(headers, body):
    # vpn-enterprise-webhooks.txt: X-VPN-Signature, then event['type'].
    signature = headers.get('X-VPN-Signature')
    if not signature or not verify_webhook_signature(body, signature, SECRETS["vpn-enterprise"]):
        return 401, "Unauthorized"
    event = json.loads(body)
    return 200, event['type']


def standard_webhooks(headers, body):
    wh = Webhook(SECRETS["standard-webhooks"])
    try:
        payload = wh.verify(body, {k.lower(): v for k, v in headers.items()})
    except Exception as e:  # the library raises WebhookVerificationError
        return 401, "verification failed: %s" % e
    return 200, payload["type"]


def slack(headers, body):
    # Slack incoming webhooks: a JSON object with a non-empty "text".
    message = json.loads(body)
    if not isinstance(message.get("text"), str) or not message["text"]:
        return 400, "invalid_payload"
    return 200, message["text"]


def discord(headers, body):
    # Discord execute-webhook: "content" of at most 2000 characters.
    message = json.loads(body)
    content = message.get("content")
    if not isinstance(content, str) or not content or len(content) > 2000:
        return 400, "content must be 1-2000 characters"
    return 200, content


def ntfy(headers, body):
    # ntfy: the message is the plain-text body.
    if not headers.get("Content-Type", "").startswith("text/plain"):
        return 400, "not text/plain"
    text = body.decode("utf-8")
    if not text.strip():
        return 400, "empty message"
    return 200, text


ROUTES = {
    "/wg-portal": wg_portal, "/wg-portal-v1": wg_portal_v1, "/defguard": defguard,
    "/procustodibus": procustodibus, "/vpn-enterprise": vpn_enterprise,
    "/standard-webhooks": standard_webhooks, "/slack": slack, "/discord": discord,
    "/ntfy": ntfy,
}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        route = ROUTES.get(self.path)
        if route is None:
            status, verdict = 404, "no route"
        else:
            try:
                status, verdict = route(self.headers, body)
            except Exception as e:
                status, verdict = 400, "unreadable: %r" % e
        with open(LOG, "a") as log:
            log.write(json.dumps({"route": self.path, "status": status, "verdict": verdict,
                                  "headers": dict(self.headers), "body": body.decode("utf-8", "replace")}) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
