"""A JetStream consumer written with the nats-py package (not wgpulse's code): the
test suite reads what the agent published through it, as a fleet's consumers would.

usage:
  nats_consumer.py read SERVERS STREAM        every message as a JSON line
                                               {seq, subject, msg_id, stored, event}
                                               (stored: when the stream stored it, Unix s)
  nats_consumer.py info SERVERS STREAM        {messages, leader, replicas}
  nats_consumer.py create SERVERS STREAM SUBJECT REPLICAS MAX_BYTES
                                               a stream that refuses new messages when full
  nats_consumer.py follow SERVERS STREAM      prints each node's connects and
                                               disconnects as they arrive (the fleet demo)
SERVERS is a comma-separated list of nats:// URLs.
"""
import asyncio
import json
import sys

import nats
from nats.js.api import DiscardPolicy, StreamConfig


async def connect(servers):
    return await nats.connect(servers=servers.split(","), connect_timeout=5,
                              max_reconnect_attempts=5)


async def read(servers, stream):
    nc = await connect(servers)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    # An ephemeral pull consumer over every subject of the stream.
    subject = info.config.subjects[0] if len(info.config.subjects) == 1 else ">"
    sub = await js.pull_subscribe(subject, durable=None, stream=stream)
    got = 0
    while got < total:
        try:
            msgs = await sub.fetch(batch=min(500, total - got), timeout=5)
        except nats.errors.TimeoutError:
            break
        for msg in msgs:
            meta = msg.metadata
            print(json.dumps({
                "seq": meta.sequence.stream,
                "subject": msg.subject,
                "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
                "stored": meta.timestamp.timestamp(),
                "event": json.loads(msg.data),
            }), flush=True)
            await msg.ack()
            got += 1
    await nc.close()


async def info(servers, stream):
    nc = await connect(servers)
    js = nc.jetstream()
    i = await js.stream_info(stream)
    cluster = i.cluster
    print(json.dumps({
        "messages": i.state.messages,
        "leader": cluster.leader if cluster else None,
        "replicas": [r.name for r in (cluster.replicas or [])] if cluster else [],
    }), flush=True)
    await nc.close()


async def create(servers, stream, subject, replicas, max_bytes):
    nc = await connect(servers)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject], num_replicas=int(replicas),
                                     max_bytes=int(max_bytes), discard=DiscardPolicy.NEW))
    print(json.dumps({"created": stream}), flush=True)
    await nc.close()


async def follow(servers, stream):
    nc = await connect(servers)
    js = nc.jetstream()
    sub = await js.subscribe("wgpulse.*.peer_metric.*", stream=stream, ordered_consumer=True)
    async for msg in sub.messages:
        event = json.loads(msg.data)
        if event["event"] not in ("connect", "disconnect"):
            continue
        peer = event["payload"]["Peer"]
        print(f'{event["node"]:>10}  {event["event"]:<10}  {peer.get("DisplayName", "")} '
              f'({event["identifier"][:8]}…) from {event["payload"]["Status"].get("Endpoint")}',
              flush=True)


def main():
    command, servers, stream = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "read":
        asyncio.run(read(servers, stream))
    elif command == "info":
        asyncio.run(info(servers, stream))
    elif command == "create":
        asyncio.run(create(servers, stream, *sys.argv[4:7]))
    elif command == "follow":
        asyncio.run(follow(servers, stream))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
