"""Holds SMTP sessions open the way a slowloris attacker does, for
test_resource_faults.py, in a process of its own so that it can run as
another user (the daemon limits sessions per uid on loopback TCP).

    holdsessions.py PORT IDLE COMMAND DATA INTERVAL LIMIT

opens IDLE + COMMAND + DATA connections to 127.0.0.1:PORT at once. IDLE
ones read the greeting and send nothing; COMMAND ones trickle a command
line that never ends ("NOOP xxxx...", a byte every INTERVAL seconds);
DATA ones go through EHLO, MAIL, RCPT and DATA and then trickle body bytes
the same way. When every connection got its greeting (or a refusal) it
prints one line "ready GREETED REFUSED" and keeps going until the daemon
closes each session or LIMIT seconds have passed. Then it prints one JSON
object: per connection its kind, the greeting's code, how it ended
("421", "closed" without a reply, or "open" at LIMIT) and when
(time.monotonic(), which is the system's CLOCK_MONOTONIC, so the caller
can compare it with its own).
"""

import asyncio
import json
import sys
import time


async def reply(reader):
    """The last line of one reply, or b"" when the server closed."""
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def hold(kind, port, interval, ready, result):
    entry = {"kind": kind, "greeting": None, "end": "open", "at": None}
    result.append(entry)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        entry["greeting"] = "connect failed"
        ready.release()
        return
    try:
        line = await reply(reader)
        entry["greeting"] = line[:3].decode(errors="replace")
        if not line.startswith(b"220"):
            entry["end"] = "refused"
            return
        if kind == "data":
            for command in (b"EHLO slow.test", b"MAIL FROM:<s@example.org>",
                            b"RCPT TO:<b@example.net>", b"DATA"):
                writer.write(command + b"\r\n")
                line = await reply(reader)
                if not line[:1] in (b"2", b"3"):
                    entry["end"] = line[:3].decode(errors="replace")
                    return
        ready.release()
        ready = None
        trickle = b"NOOP " if kind == "command" else b"Subject: slow\r\n\r\n"
        pending = asyncio.ensure_future(reply(reader))
        while True:
            if kind != "idle":
                writer.write(trickle[:1] if trickle else b"x")
                trickle = trickle[1:]
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if done:
                line = pending.result()
                entry["end"] = line[:3].decode(errors="replace") \
                    if line else "closed"
                entry["at"] = time.monotonic()
                return
    except (OSError, asyncio.IncompleteReadError):
        entry["end"] = "closed"
        entry["at"] = time.monotonic()
    finally:
        if ready is not None:
            ready.release()
        writer.close()


async def main(port, idle, command, data, interval, limit):
    result = []
    ready = asyncio.Semaphore(0)
    kinds = ["idle"] * idle + ["command"] * command + ["data"] * data
    tasks = [asyncio.ensure_future(hold(k, port, interval, ready, result)) for k in kinds]
    for _ in kinds:
        await asyncio.wait_for(ready.acquire(), limit)
    greeted = sum(e["greeting"] == "220" for e in result)
    print(f"ready {greeted} {len(result) - greeted}", flush=True)
    _, still = await asyncio.wait(tasks, timeout=limit)
    for task in still:
        task.cancel()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(int(args[0]), int(args[1]), int(args[2]), int(args[3]),
                     float(args[4]), float(args[5])))
