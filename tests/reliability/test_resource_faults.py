"""Resource faults: a full spool file system gives 452 and recovers by
itself; descriptor exhaustion (a low RLIMIT_NOFILE) and the session limit
give 421 and no crash; many concurrent clients and messages with no error
and bounded memory.

Short (make check): 50 clients, 500 messages. Long (make
check-reliability): 500 clients, 20,000 messages.
"""

import asyncio
import os
import select
import smtplib
import socket
import time

from conftest import scale
from harness import (CLIENT_HOSTNAME, daemon_spawn, daemon_wait_started,
                     make_message, random_body, send_message, wait_until)

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
    deadline = time.monotonic() + 10
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
    codes = []
    for s in held:
        s.settimeout(10)
        codes.append(s.recv(512)[:3])
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
