"""A consumer that keeps a live channel list right across bridge and
Asterisk reconnects, from the bridge's snapshots plus live events: the
worked example of docs/snapshots.md, run by tests/snapshot.rs.

    python snapshot_consumer.py URL EXCHANGE SERVER

Binds a queue of its own (exclusive, gone when it disconnects) to
`SERVER.snapshot.*` (items and markers), `SERVER.call.Newchannel.#`,
`SERVER.call.Hangup.#` and `SERVER.user.Done`; prints `ready` once bound;
on the `Done` user event prints one JSON line (the channel list and the
snapshots seen) and exits. Exits 2 when nothing ends it within 60 s.

The rule (docs/snapshots.md):
- live events always update the current table;
- on a start marker: collect the items into a new table, and remember
  the live events that follow (their seq is above the marker's);
- on the end marker of that snapshot: if complete, the new table replaces
  the current one and the remembered live events are applied to it again,
  in order (an event read after the start may or may not be reflected in
  the items: applying it again is harmless, because each event sets a
  state rather than changing it); if incomplete, the new table is thrown
  away and the current one stays until the next snapshot.
"""

import json
import sys

import pika


def apply(table, event, fields):
    """One live event onto a channel table (name -> state)."""
    channel = fields.get("Channel")
    if event == "Newchannel":
        table[channel] = fields.get("ChannelStateDesc", "")
    elif event == "Hangup":
        table.pop(channel, None)


def main():
    url, exchange, server = sys.argv[1:4]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    for key in ("snapshot.*", "call.Newchannel.#", "call.Hangup.#", "user.Done"):
        ch.queue_bind(queue=q, exchange=exchange, routing_key=f"{server}.{key}")
    print("ready", flush=True)

    table = {}  # the current channel list: name -> state
    pending = None  # the snapshot being read: id, seq, items, later live events
    snapshots = []  # what was seen, for the test
    last_seq = 0
    out_of_order = 0

    def on_message(chan, method, props, body):
        nonlocal pending, last_seq, out_of_order
        msg = json.loads(body)
        event, fields, seq = msg["event"], msg["fields"], msg["seq"]
        # Items and events take increasing seqs; markers repeat the last.
        if seq < last_seq:
            out_of_order += 1
        last_seq = seq
        if event == "SnapshotStart":
            pending = {"id": fields["SnapshotId"], "seq": seq, "items": {}, "live": []}
        elif event == "SnapshotEnd":
            complete = fields["Complete"] == "true"
            if pending is not None and pending["id"] == fields["SnapshotId"]:
                if complete:
                    table.clear()
                    table.update(pending["items"])
                    for ev, f in pending["live"]:
                        apply(table, ev, f)
                snapshots.append({"id": fields["SnapshotId"], "complete": complete,
                                  "items": int(fields["Items"]), "start_seq": pending["seq"],
                                  "end_seq": seq, "live_during": len(pending["live"])})
            pending = None
        elif "SnapshotKind" in fields:
            if pending is not None and fields["SnapshotId"] == pending["id"] \
                    and fields["SnapshotKind"] == "channels":
                pending["items"][fields["Channel"]] = fields.get("ChannelStateDesc", "")
        elif event == "UserEvent":
            print(json.dumps({"channels": sorted(table), "snapshots": snapshots,
                              "out_of_order": out_of_order}), flush=True)
            chan.stop_consuming()
        else:
            apply(table, event, fields)
            if pending is not None:
                pending["live"].append((event, fields))

    ch.basic_consume(queue=q, on_message_callback=on_message, auto_ack=True)
    conn.call_later(60, lambda: sys.exit(2))
    ch.start_consuming()
    conn.close()


if __name__ == "__main__":
    main()
