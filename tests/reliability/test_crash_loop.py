"""The crash loop: clients submit messages with unique ids while the daemon
is SIGKILLed at random moments and restarted, and the upstream (aiosmtpd)
is stopped and started at random. Every message that got a 250 must arrive
intact; duplicates are counted and reported; the spool ends empty.

Short (make check): 10 kills. Long (make check-reliability): 200 kills.
"""

import os
import random
import re
import smtplib
import threading
import time

from conftest import scale
from harness import (CLIENT_HOSTNAME, free_port, make_message, random_body,
                     wait_until)

TOKEN_RE = re.compile(rb"^Subject: crash (\S+)\r$", re.MULTILINE)


class Clients:
    """Threads that submit messages over TCP to a fixed port until told to
    stop, 1 to 3 per connection, each with a unique token in its Subject.
    accepted maps token -> message for every 250 to the end of DATA."""

    def __init__(self, port, count, rng):
        self.port = port
        self.accepted = {}
        self.attempts = 0
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,
                         random.Random(rng.random())), daemon=True)
                         for i in range(count)]

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)
            assert not t.is_alive(), "a client thread hangs"

    def _run(self, index, rng):
        n = 0
        while not self._stop.is_set():
            try:
                client = smtplib.SMTP("127.0.0.1", self.port,
                                      local_hostname=CLIENT_HOSTNAME,
                                      timeout=10)
            except OSError:
                time.sleep(0.02)
                continue
            try:
                for _ in range(rng.randint(1, 3)):
                    n += 1
                    token = f"c{index}-{n}-{os.urandom(4).hex()}"
                    size = rng.choice((300, 2000, 20000, 150000))
                    message = make_message(f"crash {token}",
                                           random_body(size))
                    with self._lock:
                        self.attempts += 1
                    client.sendmail("a@example.org", ["b@example.net"],
                                    message)
                    with self._lock:
                        self.accepted[token] = message
                client.quit()
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.refused += 1
            finally:
                client.close()


def spool_files(daemon, sub):
    path = os.path.join(daemon.settings["spool"], sub)
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def test_crash_loop(daemon_factory, upstream_factory, tmp_path, figures):
    kills = scale(10, 200)
    rng = random.Random(os.environ.get("RELIABILITY_SEED") or None)
    upstream = upstream_factory(tls=None)
    port = free_port()
    daemon = daemon_factory(
        upstream.port,
        listen=[{"address": "127.0.0.1", "port": str(port)},
                {"path": str(tmp_path / "smtp.sock"), "mode": "0666"}],
        relays={"upstream": {"tls": "none", "timeout_command": 5}},
        queue={"retry_min": 1, "retry_max": 2})
    clients = Clients(port, scale(4, 6), rng)
    started = time.monotonic()
    clients.start()
    upstream_restarts = 0
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.01, 0.5))
            daemon.kill()
            if rng.random() < 0.15:
                upstream.stop()
                upstream_restarts += 1
                time.sleep(rng.uniform(0, 0.5))
                upstream.start()
            daemon.start()
    finally:
        clients.stop()
    accepted = clients.accepted
    daemon.flush()

    def arrived():
        got = {}
        for m in upstream.messages:
            match = TOKEN_RE.search(m.content)
            assert match, f"relayed message without a token: {m.content[:300]!r}"
            got.setdefault(match.group(1).decode(), []).append(m)
        missing = set(accepted) - set(got)
        if missing or spool_files(daemon, "queue"):
            return None
        return got

    try:
        got = wait_until(arrived, 180, "every accepted message upstream "
                         "and an empty queue/")
    except AssertionError:
        got = None
    got_now = {}
    for m in upstream.messages:
        match = TOKEN_RE.search(m.content)
        got_now.setdefault(match.group(1).decode(), []).append(m)
    lost = sorted(set(accepted) - set(got_now))
    corrupted = [t for t in accepted if t in got_now and not all(
        m.content.endswith(accepted[t]) and m.rcpt_tos == ["b@example.net"]
        for m in got_now[t])]
    duplicates = sum(len(v) - 1 for v in got_now.values())
    unacknowledged = len(set(got_now) - set(accepted))
    assert daemon.terminate() == 0, "the daemon failed to stop cleanly"
    figures(kills=kills, upstream_restarts=upstream_restarts,
            messages_accepted=len(accepted), submissions=clients.attempts,
            sessions_cut=clients.refused,
            arrived_without_250=unacknowledged, lost=len(lost),
            corrupted=len(corrupted), duplicates=duplicates,
            seconds=round(time.monotonic() - started, 1))
    assert not lost, f"{len(lost)} accepted messages lost: {lost[:10]}"
    assert not corrupted, f"corrupted in transit: {corrupted[:10]}"
    assert got is not None, "queue/ not empty at the end: " + ", ".join(
        spool_files(daemon, "queue")[:10])
    assert spool_files(daemon, "tmp") == []
    assert spool_files(daemon, "corrupt") == [], "files moved to corrupt/"
