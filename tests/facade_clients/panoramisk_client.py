"""An AMI application written with panoramisk (unchanged), driven by
tests/facade_clients.rs.

    python panoramisk_client.py HOST PORT USER SECRET SCENARIO [ARG]

Prints one JSON object per line for each observation (flushed at once), and
`{"kind": "done"}` when the scenario is over; exits 0 unless the driver
itself broke (a failed assertion is the Rust test's business: it reads the
lines). Scenarios:

    login            plain Login (the Manager's own), then Logoff
    login_md5        Challenge + Login with AuthType MD5 sent as actions
    events N         the first N events after Login (names in order)
    ping             Ping
    list             CoreShowChannels (an event list)
    originate        async Originate: the messages the future resolves with
    forbidden        Command "core show version" (expects Permission denied)
    logoff           Logoff: the Goodbye response and the close
    inflight         QueueStatus, which the backend never answers, in flight
                     when the backend goes down: its answer, then the close
    same_id N        N x CoreShowChannels with ActionID "1", one after the
                     other; every raw message carrying an ActionID is printed
    reconnect        Login, Ping; after the server goes away the Manager's own
                     reconnect logs in again; then Ping again
"""

import asyncio
import hashlib
import json
import os
import sys

from panoramisk import Manager
from panoramisk.actions import Action


def out(**obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def msg_dict(m):
    """A panoramisk Message as a plain dict (lowercase keys)."""
    d = {k.lower(): v for k, v in m.items()}
    if getattr(m, "content", ""):
        d["content"] = m.content
    return d


SUMMARY_KEYS = ("response", "event", "actionid", "eventlist", "message", "listitems")


def summary(m):
    """The headers of a list's message that the tests look at."""
    return {k: v for k, v in msg_dict(m).items() if k in SUMMARY_KEYS}


def response(action, m):
    if isinstance(m, list):
        out(kind="response", action=action, messages=[summary(x) for x in m])
    else:
        out(kind="response", action=action, **msg_dict(m))


class RawIds:
    """save_stream target: collects the raw bytes the Manager receives (and
    appends them to the file named by $FACADE_CLIENT_WIRE, for the test's
    failure reports)."""

    def __init__(self):
        self.buf = b""
        path = os.environ.get("FACADE_CLIENT_WIRE")
        self.file = open(path, "ab", buffering=0) if path else None

    def write(self, data):
        self.buf += data
        if self.file:
            self.file.write(data)

    def messages_with_id(self):
        text = self.buf.decode("utf8", "replace")
        found = []
        for block in text.split("\r\n\r\n"):
            lines = [ln for ln in block.split("\r\n") if ln and not ln.startswith("Asterisk Call Manager/")]
            if not lines:
                continue
            ids = [ln.split(": ", 1)[1] for ln in lines if ln.lower().startswith("actionid: ")]
            if ids:
                found.append({"first": lines[0], "actionid": ids[0]})
        return found


async def logged_in(manager, timeout=10):
    """Waits for the Manager's own Login; prints it."""
    fut = manager.authenticated_future
    if fut is None:
        for _ in range(timeout * 20):
            await asyncio.sleep(0.05)
            fut = manager.authenticated_future
            if fut is not None or manager.authenticated:
                break
    resp = await asyncio.wait_for(fut, timeout) if fut is not None else None
    version = manager.protocol.version if manager.protocol else None
    out(kind="login", ok=bool(resp is not None and resp.success), version=version,
        message=(resp.message if resp is not None else None))
    return bool(resp is not None and resp.success)


async def main():
    host, port, user, secret, scenario = sys.argv[1:6]
    arg = sys.argv[6] if len(sys.argv) > 6 else None
    loop = asyncio.get_running_loop()
    raw = RawIds()
    config = dict(host=host, port=int(port), loop=loop, ping_delay=3600,
                  reconnect_timeout=1, save_stream=raw)
    if scenario != "login_md5":
        config.update(username=user, secret=secret)
    manager = Manager(**config)

    events = []
    got_events = asyncio.Event()
    want = int(arg) if (scenario == "events" and arg) else 0

    def on_event(_manager, ev):
        if scenario == "events" and len(events) < want:
            events.append(ev.event)
            out(kind="event", name=ev.event, privilege=ev.get("Privilege", ""))
            if len(events) >= want:
                got_events.set()

    manager.register_event("*", on_event)

    logins = []
    login_seen = asyncio.Event()
    lost = asyncio.Event()

    def on_login(_m):
        logins.append(1)
        login_seen.set()

    def on_disconnect(_m, exc):
        out(kind="disconnected")
        lost.set()

    manager.on_login = on_login
    manager.on_disconnect = on_disconnect

    await manager.connect()

    if scenario == "login_md5":
        for _ in range(100):
            if manager.protocol is not None:
                break
            await asyncio.sleep(0.02)
        ch = await asyncio.wait_for(manager.send_action({"Action": "Challenge", "AuthType": "MD5"}), 10)
        out(kind="response", action="Challenge", **msg_dict(ch))
        key = hashlib.md5((ch.challenge + secret).encode()).hexdigest()
        resp = await asyncio.wait_for(manager.send_action(
            {"Action": "Login", "Username": user, "AuthType": "MD5", "Key": key, "Events": "off"}), 10)
        out(kind="login", ok=bool(resp.success), version=manager.protocol.version, message=resp.message)
        bye = await asyncio.wait_for(manager.send_action({"Action": "Logoff"}), 10)
        response("Logoff", bye)
        manager.close()
        out(kind="done")
        return

    if not await logged_in(manager):
        manager.close()
        out(kind="done")
        return

    if scenario == "login":
        bye = await asyncio.wait_for(manager.send_action({"Action": "Logoff"}), 10)
        response("Logoff", bye)
    elif scenario == "events":
        await asyncio.wait_for(got_events.wait(), 20)
    elif scenario == "ping":
        response("Ping", await asyncio.wait_for(manager.send_action({"Action": "Ping"}), 10))
    elif scenario == "list":
        response("CoreShowChannels", await asyncio.wait_for(
            manager.send_action({"Action": "CoreShowChannels"}), 10))
    elif scenario == "originate":
        action = Action({"Action": "Originate", "Channel": "Local/100@test", "Context": "test",
                         "Exten": "sink", "Priority": "1", "CallerID": '"Small 100" <5000>',
                         "Timeout": "15000", "Async": "true"})
        out(kind="sent", action="Originate", actionid=action.action_id)
        response("Originate", await asyncio.wait_for(manager.send_action(action), 20))
    elif scenario == "forbidden":
        response("Command", await asyncio.wait_for(manager.send_command("core show version"), 10))
    elif scenario == "logoff":
        resp = await asyncio.wait_for(manager.send_action({"Action": "Logoff"}), 10)
        response("Logoff", resp)
        # Logoff is not a forgettable action: the close must come from the
        # server (the Manager would reconnect: stop it once seen).
        try:
            await asyncio.wait_for(lost.wait(), 5)
            out(kind="closed")
        except asyncio.TimeoutError:
            out(kind="still_open")
    elif scenario == "same_id":
        for _ in range(int(arg or 1)):
            a = Action({"Action": "CoreShowChannels", "ActionID": "1"})
            response("CoreShowChannels", await asyncio.wait_for(manager.send_action(a), 10))
        # Anything foreign still on its way arrives meanwhile.
        await asyncio.sleep(0.5)
        out(kind="raw_ids", messages=raw.messages_with_id())
    elif scenario == "inflight":
        fut = manager.send_action({"Action": "QueueStatus"})
        out(kind="ready")
        try:
            await asyncio.wait_for(lost.wait(), 15)
            out(kind="closed")
        except asyncio.TimeoutError:
            out(kind="still_open")
        if fut.done():
            response("QueueStatus", fut.result())
        else:
            out(kind="no_response", action="QueueStatus")
    elif scenario == "reconnect":
        response("Ping", await asyncio.wait_for(manager.send_action({"Action": "Ping"}), 10))
        out(kind="ready")
        await asyncio.wait_for(lost.wait(), 30)
        login_seen.clear()
        await asyncio.wait_for(login_seen.wait(), 30)
        out(kind="login", ok=manager.authenticated, version=manager.protocol.version, again=True)
        response("Ping", await asyncio.wait_for(manager.send_action({"Action": "Ping"}), 10))
    else:
        out(kind="error", message="unknown scenario " + scenario)
    manager.on_disconnect = lambda *_: None
    manager.connection_lost = lambda *_: None
    manager.close()
    out(kind="done")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the test sees it as a line, not only a code
        out(kind="error", message="%s: %s" % (type(e).__name__, e))
        sys.exit(1)
