"""Resource faults: a full spool file system gives 452 and recovers by
itself; descriptor exhaustion (a low RLIMIT_NOFILE) and the session limit
give 421 and no crash; many concurrent clients and messages with no error
and bounded memory; idle and slowloris clients cannot starve others.

Short (make check): 50 clients, 500 messages. Long (make
check-reliability): 500 clients, 20,000 messages.
"""

import asyncio
import json
import os
import select
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import scale
from harness import (CLIENT_HOSTNAME, daemon_spawn, daemon_wait_started,
                     make_message, random_body, scaled, send_message,
                     wait_until)

# AddressSanitizer's quarantine would count as the daemon's memory.
SMALL_QUARANTINE = {"ASAN_OPTIONS": "quarantine_size_mb=1:"
                    "thread_local_quarantine_size_kb=64"}


def status_kib(pid, field):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_in(daemon, prefix):
    """Starts the daemon behind prefix (which must exec it in the same
    process) and fills in its port like Daemon.start()."""
    daemon_spawn(daemon, prefix=prefix, env=daemon.env)
    listening = daemon_wait_started(daemon)
    daemon.port = int(next(a for a in listening
                           if a.startswith("127.0.0.1:")).split(":")[1])
    return daemon


def try_submit(daemon, message, timeout=30):
    """(code, text) of the reply to the end of DATA, or of the first
    refusal (an smtplib exception's code)."""
    try:
        client = smtplib.SMTP("127.0.0.1", daemon.port,
                              local_hostname=CLIENT_HOSTNAME,
                              timeout=timeout)
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code, exc.smtp_error
    try:
        client.sendmail("a@example.org", ["b@example.net"], message)
        return 250, b""
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def test_full_spool_gives_452_and_recovers(daemon_factory, upstream_factory,
                                           figures):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port, start=False,
                            queue={"retry_min": 1, "retry_max": 1})
    spool = daemon.settings["spool"]
    os.makedirs(spool)
    # A 600 KiB tmpfs on the spool, in a mount namespace of the daemon's
    # own (root, or an unprivileged user namespace otherwise).
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    start_in(daemon, ["unshare", "--mount", *userns, "sh", "-c",
                      f'mount -t tmpfs -o size=600k tmpfs "{spool}" && '
                      'exec "$@"', "sh"])
    accepted, refusals, tries = [], [], 0
    while len(refusals) < 3 and tries < 40:
        tries += 1
        message = make_message(f"full {tries}", random_body(60 * 1024))
        code, text = try_submit(daemon, message)
        if code == 250:
            accepted.append(message)
        else:
            refusals.append((code, text))
    assert refusals, f"{tries} messages of 60 KiB fit in 600 KiB"
    assert all(code == 452 for code, _ in refusals), refusals
    assert daemon.running(), "the daemon died on a full spool"
    # The upstream comes back: the queue drains, space frees, and the
    # daemon accepts again without anyone's help.
    upstream.start()
    daemon.flush()
    upstream.wait_messages(len(accepted), timeout=60)
    after = make_message("after the full disk", random_body(60 * 1024))
    code, text = try_submit(daemon, after)
    assert code == 250, (code, text)
    upstream.wait_messages(len(accepted) + 1, timeout=30)
    got = [m.content for m in upstream.messages]
    lost = [m for m in accepted + [after]
            if not any(c.endswith(m) for c in got)]
    figures(accepted_before_full=len(accepted), refused_452=len(refusals),
            recovered=code == 250, lost=len(lost),
            duplicates=len(got) - len(accepted) - 1)
    assert not lost


def test_descriptor_exhaustion_and_session_limit(daemon_factory, upstream,
                                                 figures):
    limit = 64
    daemon = daemon_factory(upstream.port, start=False,
                            limits={"max_sessions": 1000,
                                    "max_sessions_per_client": 1000})
    start_in(daemon, ["prlimit", f"--nofile={limit}:{limit}"])
    pid = daemon.proc.pid
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        nofile = next(line.split()[3] for line in f
                      if line.startswith("Max open files"))
    socks = [socket.create_connection(("127.0.0.1", daemon.port), 10)
             for _ in range(3 * int(nofile))]
    first = {}
    deadline = time.monotonic() + scaled(10)
    while len(first) < len(socks) and time.monotonic() < deadline:
        waiting = [s for s in socks if s not in first]
        ready, _, _ = select.select(waiting, [], [], 0.5)
        for s in ready:
            try:
                first[s] = s.recv(512)
            except OSError:
                first[s] = b""
    greeted = sum(line.startswith(b"220") for line in first.values())
    refused = sum(line.startswith(b"421") for line in first.values())
    silent = len(socks) - len(first)
    assert daemon.running(), "the daemon died out of descriptors"
    for s in socks:
        s.close()
    # Descriptors come back (once the daemon has seen the closes): a
    # message goes through.
    def after():
        try:
            return send_message(daemon, make_message("after EMFILE", "ok\n"),
                                timeout=30)
        except smtplib.SMTPConnectError:
            return None
    qid = wait_until(after, 30, "a message accepted after the flood")
    upstream.wait_messages(1)
    figures(rlimit_nofile=int(nofile), connections=len(socks),
            greeted=greeted,
            refused_421=refused, no_answer_in_5s=silent, after=qid)
    assert greeted + refused == len(socks), (
        f"{silent} connections got no answer in 10 s, "
        f"{len(first) - greeted - refused} something else than 220 or 421")
    assert refused > 0

    # The session limit: max_sessions 5, 8 connections: 3 get 421. All
    # come from this one user, whose own limit is set out of the way.
    assert daemon.terminate() == 0
    daemon2 = daemon_factory(upstream.port,
                             limits={"max_sessions": 5,
                                     "max_sessions_per_client": 5})
    held = [socket.create_connection(("127.0.0.1", daemon2.port), 10)
            for _ in range(8)]
    # Every greeting is read before any connection closes: a session
    # closed early frees its slot for a connection the daemon has not
    # accepted yet (a loaded machine's daemon lags behind the connects).
    codes = []
    for s in held:
        s.settimeout(scaled(10))
        codes.append(s.recv(512)[:3])
    for s in held:
        s.close()
    assert codes.count(b"220") == 5 and codes.count(b"421") == 3, codes
    assert daemon2.running()


async def _client(port, count, size, errors, latencies):
    """One SMTP client submitting count messages in one session."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply():
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    async def command(text, expect):
        writer.write(text)
        line = await reply()
        if not line.startswith(expect):
            raise AssertionError(f"{text[:20]!r}: {line!r}")

    try:
        line = await reply()
        assert line.startswith(b"220"), line
        await command(b"EHLO client.test\r\n", b"250")
        body = make_message("load", random_body(size))
        for _ in range(count):
            started = time.monotonic()
            await command(b"MAIL FROM:<a@example.org>\r\n", b"250")
            await command(b"RCPT TO:<b@example.net>\r\n", b"250")
            await command(b"DATA\r\n", b"354")
            await command(body + b".\r\n", b"250")
            latencies.append(time.monotonic() - started)
        await command(b"QUIT\r\n", b"221")
    except (AssertionError, ConnectionError, OSError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


async def _load(port, clients, per_client, size):
    errors, latencies = [], []
    await asyncio.gather(*(_client(port, per_client, size, errors, latencies)
                           for _ in range(clients)))
    return errors, latencies


def test_many_clients_bounded_memory(daemon_factory, upstream_factory,
                                     figures):
    clients = scale(50, 500)
    total = scale(500, 20000)
    upstream = upstream_factory(tls=None)
    daemon = daemon_factory(
        upstream.port, env=SMALL_QUARANTINE,
        limits={"max_sessions": clients + 10,
                "max_sessions_per_client": clients + 10},
        relays={"upstream": {"tls": "none"}})
    pid = daemon.pid
    base_rss = status_kib(pid, "VmRSS")
    started = time.monotonic()
    errors, latencies = asyncio.run(
        _load(daemon.port, clients, total // clients, 1000))
    accept_s = time.monotonic() - started
    peak_fds = open_fds(pid)
    upstream.wait_messages(total, timeout=scale(60, 900))
    drain_s = time.monotonic() - started
    hwm = status_kib(pid, "VmHWM")
    figures(clients=clients, messages=total, errors=len(errors),
            accept_seconds=round(accept_s, 1),
            accepted_per_s=round(total / accept_s),
            delivered_seconds=round(drain_s, 1), rss_start_kib=base_rss,
            rss_peak_kib=hwm, fds_after_load=peak_fds,
            p50_ms=round(sorted(latencies)[len(latencies) // 2] * 1000, 1)
            if latencies else None)
    assert not errors, errors[:5]
    upstream.assert_count_stays(total, settle=1)
    assert hwm < 256 * 1024, f"peak RSS {hwm} KiB"


HOLD = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "holdsessions.py")
# Other local users than the test's own (root): the daemon counts
# sessions per uid on loopback TCP.
DAEMON_UID, BIN_UID, NOBODY_UID = 1, 2, 65534

# One submission as another user, over loopback TCP, retried while the
# daemon refuses the connection with 421 (its session table is full):
# prints how many tries it took, when it got its 250 (time.monotonic())
# and the last refusal.
VICTIM = """
import json, smtplib, sys, time
port, deadline, subject = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
message = f"Subject: {subject}\\r\\n\\r\\nserved\\r\\n".encode()
tries, refusal = 0, None
while time.monotonic() < deadline:
    tries += 1
    try:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="v.test",
                              timeout=10)
    except smtplib.SMTPConnectError as exc:
        refusal = f"{exc.smtp_code} {exc.smtp_error.decode()}"
        time.sleep(0.2)
        continue
    client.sendmail("v@example.org", ["b@example.net"], message)
    client.quit()
    print(json.dumps({"tries": tries, "at": time.monotonic(),
                      "refusal": refusal}))
    sys.exit(0)
print(json.dumps({"tries": tries, "at": None, "refusal": refusal}))
"""


def hold_sessions(port, uid, idle, command, data, limit, interval=0.5):
    """Starts holdsessions.py as uid; returns the process and how many of
    its connections were greeted and refused, once all were answered."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", HOLD, str(port), str(idle), str(command),
         str(data), str(interval), str(limit)],
        user=uid, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", f"holdsessions: {line}"
    return proc, int(line[1]), int(line[2])


def held_sessions(proc, timeout):
    """What holdsessions.py reports about its connections at its end."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"holdsessions exited {proc.returncode}"
    return json.loads(out.strip().splitlines()[-1])


def submit_as(uid, port, subject, within):
    result = subprocess.run(
        ["/usr/bin/python3", "-c", VICTIM, str(port),
         str(time.monotonic() + within), subject],
        user=uid, capture_output=True, text=True, timeout=within + 30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_slow_clients_cannot_starve_others(daemon_factory, upstream_factory,
                                           figures):
    """One local user fills its share of the sessions (max_sessions_per_
    client) with idle connections, never-ending command lines and DATA
    fed a byte every half second, and tries for more: those get 421
    4.7.0, and another user is served at once while they hold on. Then two
    such users fill the whole table (max_sessions): a third user is
    refused while it is full, and served as soon as session_timeout has
    cut the slow sessions, each with 421."""
    if os.geteuid() != 0:
        pytest.fail("needs root to connect as other users")
    share = scale(6, 50)
    timeout = scale(6, 10)
    upstream = upstream_factory(tls=None)
    daemon = daemon_factory(
        upstream.port, relays={"upstream": {"tls": "none"}},
        limits={"max_sessions": 2 * share,
                "max_sessions_per_client": share,
                "idle_timeout": 120, "session_timeout": timeout})
    third = share // 3
    mix = (third, third, share - 2 * third)

    # One user's share, and two more it does not get.
    began = time.monotonic()
    proc, greeted, refused = hold_sessions(daemon.port, DAEMON_UID,
                                           mix[0], mix[1], mix[2] + 2,
                                           timeout + 20)
    try:
        victim = submit_as(NOBODY_UID, daemon.port, "served at once", 10)
    finally:
        held = held_sessions(proc, timeout + 40)
    ends = [h for h in held if h["greeting"] == "220"]
    first_cut = min((h["at"] for h in ends if h["at"]), default=None)
    upstream.wait_messages(1)
    assert greeted == share and refused == 2, (greeted, refused)
    assert [h["greeting"] for h in held].count("421") == 2, held
    assert victim["at"] is not None and victim["tries"] == 1, victim
    assert first_cut is None or victim["at"] < first_cut, \
        "the other user was served only after the slow sessions ended"
    assert all(h["end"] == "421" for h in ends), \
        [h for h in ends if h["end"] != "421"][:5]
    held_for = [h["at"] - began for h in ends]

    # Two users fill the table; a third waits at most session_timeout.
    began = time.monotonic()
    procs = [hold_sessions(daemon.port, uid, *mix, timeout + 20)
             for uid in (DAEMON_UID, BIN_UID)]
    try:
        late = submit_as(NOBODY_UID, daemon.port, "served after the cut",
                         timeout + 20)
    finally:
        full = [held_sessions(p, timeout + 40) for p, _, _ in procs]
    upstream.wait_messages(2)
    assert [g for _, g, _ in procs] == [share, share], procs
    assert late["at"] is not None, f"never served: {late}"
    assert late["tries"] > 1 and late["refusal"].startswith("421"), late
    assert all(h["end"] == "421" for f in full for h in f), full
    waited = late["at"] - began
    figures(max_sessions=2 * share, max_sessions_per_client=share,
            session_timeout=timeout,
            slow_sessions=dict(zip(("idle", "command", "data"), mix)),
            refused_over_share=refused,
            other_user_tries=victim["tries"],
            slow_sessions_cut_after_s=[round(min(held_for), 1),
                                       round(max(held_for), 1)],
            table_full_tries=late["tries"],
            table_full_served_after_s=round(waited, 1))
    assert waited < timeout + scaled(15), f"served only after {waited:.1f} s"
    assert daemon.running()
