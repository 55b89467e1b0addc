"""A legacy AMI application, as a wallboard would be written with panoramisk:
it logs in, counts the events it receives and shows a few. scripts/demo.sh
points it at the bridge's AMI facade instead of Asterisk.

    python demo-ami-client.py HOST PORT USER SECRET SECONDS

Prints `logged in (AMI <version>)` once logged in, then one line per event
for the first few, and at the end `received N events` (when SECONDS have
passed with no event for 2 s, or SECONDS in all).
"""

import asyncio
import sys
import time

from panoramisk import Manager


async def main():
    host, port, user, secret, seconds = sys.argv[1:6]
    manager = Manager(host=host, port=int(port), username=user, secret=secret,
                      ping_delay=3600, reconnect_timeout=1)
    count = 0
    last = time.monotonic()

    def on_event(_manager, event):
        nonlocal count, last
        count += 1
        last = time.monotonic()
        if count <= 5:
            channel = event.get("Channel", "")
            print(f"event {count}: {event.event} {channel}".rstrip(), flush=True)

    manager.register_event("*", on_event)
    await manager.connect()
    deadline = time.monotonic() + float(seconds)
    while not manager.authenticated and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not manager.authenticated:
        print("login failed", flush=True)
        sys.exit(1)
    print(f"logged in (AMI {manager.protocol.version})", flush=True)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if count and time.monotonic() - last > 2:
            break
    print(f"received {count} events", flush=True)
    manager.close()


asyncio.run(main())
