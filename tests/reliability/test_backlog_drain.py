"""A backlog drain that loses one connection before it is ready.

The daemon starts on a backlog written into its spool (backlog.py's
prefill) with the upstream down and retry_min = retry_max = 3600, as in
the backlog benchmark; then the upstream comes up behind a proxy and the
queue is flushed. The daemon opens its ten sessions at once; the proxy
(faultserver.py) drops the third of them before it is ready (at accept,
or when the client sends EHLO) and passes every other connection
through.

One failed connection while nine others to the same relay are open or
delivering is not a relay that is down: every message must still arrive
exactly once, now, rather than the whole backlog waiting out an hour's
backoff. (A relay backoff there once left a backlog test with 1,950 of
2,000 messages delivered.)

Short (make check): 600 messages. Long (make check-reliability): 5,000.
"""

import os
import signal
import subprocess
import threading

import pytest

from backlog import Daemon, PYTHON, prefill
from backlog import __file__ as BACKLOG
from conftest import scale
from faultserver import Dialogue, FaultServer
from harness import free_port, wait_until

N = scale(600, 5000)


class DropProxy(FaultServer):
    """A FaultServer that passes every connection through to the upstream
    but number `victim`, which it drops at once ("accept"), or after a
    greeting of its own when the client sends EHLO ("EHLO")."""

    def __init__(self, upstream_port, pki, victim, at):
        self.victim = victim
        self.at = at
        self.connections = 0
        self.dropped = threading.Event()
        super().__init__(upstream_port, pki.good, pki.good, pki.misnamed)

    def _serve(self, conn, mode):
        with self._lock:
            self.connections += 1
            victim = self.connections == self.victim
        if not victim:
            super()._serve(conn, mode)
            return
        try:
            if self.at == "EHLO":
                d = Dialogue(conn)
                d.send(b"220 drop.test ESMTP\r\n")
                d.line()
        except (OSError, ConnectionError):
            pass
        finally:
            self.dropped.set()
            conn.close()


@pytest.mark.parametrize("at", ["accept", "EHLO"])
def test_one_connection_lost_before_ready_does_not_stall_the_drain(
        smarthostd_binary, pki, tmp_path, figures, at):
    upstream_port = free_port()
    proxy = DropProxy(upstream_port, pki, victim=3, at=at)
    daemon = Daemon(smarthostd_binary, str(tmp_path), proxy.port, 0)
    prefill(daemon.spool, N, 2048)
    received = os.path.join(str(tmp_path), "received")
    upstream = None
    try:
        daemon.start()
        wait_until(lambda: daemon.log_count(
            "every message found at start has been read") > 0,
            max(60, N / 100), "the backlog to be read")
        upstream = subprocess.Popen([PYTHON, BACKLOG, "--upstream",
                                     str(upstream_port), received],
                                    stdout=subprocess.PIPE)
        assert upstream.stdout.readline().strip() == b"ready"
        mark = os.path.getsize(daemon.log)
        daemon.proc.send_signal(signal.SIGUSR1)
        # Without the fix the rest waits for an hour: wait far less.
        wait_until(lambda: daemon.queued() == 0, max(120, N / 20),
                   "the backlog to drain")
        assert proxy.dropped.is_set(), "the proxy dropped no connection"
        daemon.stop()
    finally:
        daemon.kill()
        proxy.close()
        if upstream is not None:
            upstream.send_signal(signal.SIGTERM)
            upstream.wait(30)
    with open(received) as f:
        got = f.read().split()
    assert len(got) == N and len(set(got)) == N, \
        f"{len(got)} messages, {len(set(got))} unique, of {N}"
    with open(daemon.log, errors="replace") as f:
        f.seek(mark)
        log = f.read()
    assert "a new session failed while" in log, log[-3000:]
    assert "no new session for" not in log, "the relay was backed off"
    figures(messages=N, dropped_at=at, connections=proxy.connections,
            lost=0, duplicates=0)
