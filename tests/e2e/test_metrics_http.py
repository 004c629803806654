"""metrics_listen: the health probe (GET /health), the answers to
everything but GET /metrics (whose counts test_observe.py checks), the
endpoint's bounds, and the accepted count of mail imported from the
maildrop."""

import http.client
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from harness import (EX_CONFIG, HOSTNAME, RawSMTP, daemon_dropping_to,
                     daemon_spawn_in_netns, daemon_wait_started,
                     delivery_line, make_message, netns_run, scaled,
                     send_message, wait_until)
from localuser import DROP_GROUP, ensure_group
from test_observe import ctl_metrics, metrics_port, samples_of, scrape_http


def get(port, path, method="GET", headers=None, body=None):
    """(status, headers, body) of one request over a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_health_and_other_requests(upstream, daemon_factory):
    daemon = daemon_factory(upstream.port, metrics_listen=0)
    port = metrics_port(daemon)
    status, headers, body = get(port, "/health")
    assert (status, body) == (200, b"ok\n")
    for path in ("/", "/metric", "/metrics/x", "/health/../secret"):
        assert get(port, path)[0] == 404, path
    # A query string is not part of the path.
    assert get(port, "/metrics?name=x")[0] == 200
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        status, headers, _ = get(port, "/metrics", method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    status, headers, body = get(port, "/metrics", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Type"] == "text/plain; version=0.0.4"
    # urllib, as a probe would: 404 raises.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing",
                               timeout=10)
        raise AssertionError("no 404 for /nothing")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def raw_exchange(port, data, timeout=10):
    """Sends data on a new connection, returns what comes back until the
    server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        return got


def test_oversized_and_abusive_requests_are_bounded(upstream,
                                                     daemon_factory):
    daemon = daemon_factory(upstream.port, metrics_listen="127.0.0.1:0")
    port = metrics_port(daemon)
    # Headers beyond 8 KiB: refused, connection closed.
    reply = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " +
                         b"a" * 100000 + b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] (400|413) ", reply), reply[:80]
    # A request line of a megabyte, no newline.
    reply = raw_exchange(port, b"GET /" + b"a" * (1 << 20))
    assert reply == b"" or re.match(rb"HTTP/1\.[01] (400|413|414) ", reply)
    # A body, even with GET: 413, never read.
    reply = raw_exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000000\r\n\r\n" + b"x" * 65536)
    assert re.match(rb"HTTP/1\.[01] 413 ", reply), reply[:80]
    # Garbage.
    reply = raw_exchange(port, b"\x00\x01\x02 nonsense\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", reply) or reply == b"", reply

    # More idle connections than the limit (16): the one beyond waits
    # and is served once the others go.
    held = [socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(20)]
    daemon.wait_log(r"metrics: 16 connections open; new ones wait")
    late = socket.create_connection(("127.0.0.1", port), timeout=10)
    late.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    late.settimeout(1)
    try:
        assert late.recv(100) == b"", "served beyond the limit"
    except socket.timeout:
        pass
    for s in held:
        s.close()
    late.settimeout(10)
    assert late.recv(100).startswith(b"HTTP/1.0 200 OK")
    late.close()
    # An idle connection is closed after the 10 s timeout.
    idle = socket.create_connection(("127.0.0.1", port), timeout=30)
    started = time.monotonic()
    assert idle.recv(100) == b""
    assert 8 < time.monotonic() - started < 25
    idle.close()

    # None of it hurt the daemon.
    assert daemon.running()
    assert get(port, "/health")[:1] == (200,)
    qid = send_message(daemon, make_message("after", "Still fine.\n"))
    daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))
    assert not daemon.log_lines(r"cannot|fatal")


def test_health_says_stopping_during_shutdown(upstream, daemon_factory):
    daemon = daemon_factory(upstream.port, metrics_listen="127.0.0.1:0",
                            shutdown_timeout=10)
    port = metrics_port(daemon)
    # A session inside a transaction holds the shutdown open.
    with RawSMTP(port=daemon.port) as client:
        client.greet()
        assert client.command("MAIL FROM:<a@example.org>").code == 250
        daemon.signal(signal.SIGTERM)
        daemon.wait_log(r"stopping")
        status, _, body = get(port, "/health")
        assert (status, body) == (503, b"stopping\n")
        # Metrics still answer while the daemon drains.
        assert get(port, "/metrics")[0] == 200
    daemon.proc.wait(scaled(20))
    assert daemon.proc.returncode == 0


def test_after_privilege_drop_and_unwritable_spool(upstream, daemon_factory,
                                                   pki):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    daemon = daemon_dropping_to(daemon_factory, upstream.port,
                                pki.good.ca_cert, "nobody",
                                metrics_listen="127.0.0.1:0")
    daemon.start()
    daemon.wait_log(r"running as nobody")
    port = metrics_port(daemon)
    assert get(port, "/health")[:1] == (200,)
    assert samples_of(scrape_http(port)[1])[
        ("smarthostd_queue_messages", ())] == 0
    queue = os.path.join(daemon.workdir, "spool", "queue")
    os.chmod(queue, 0o500)
    try:
        status, _, body = get(port, "/health")
        assert status == 503
        assert body.startswith(b"spool not writable: ")
        assert b"Permission denied" in body
    finally:
        os.chmod(queue, 0o700)
    assert get(port, "/health")[:1] == (200,)


def check_config(daemon_binary, tmp_path, text):
    path = tmp_path / "smarthostd.conf"
    path.write_text(text)
    return subprocess.run([daemon_binary, "-t", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


RELAY = 'relays = { up = { host = "127.0.0.1"; tls = "none"; }; };\n'


def test_metrics_listen_config_errors(smarthostd_binary, tmp_path):
    cases = [
        ('metrics_listen = "0.0.0.0:9125";\n',
         r":1: metrics_listen: 0\.0\.0\.0 is not loopback: set "
         r"allow_networks"),
        ('\nmetrics_listen = "127.0.0.1:99999";\n',
         r":2: metrics_listen: \"127\.0\.0\.1:99999\": the port must be"),
        ('metrics_listen = "localhost:9125";\n',
         r":1: metrics_listen: .*not a numeric IPv4 or IPv6 address"),
        ('metrics_listen = "::1";\n',
         r":1: metrics_listen: .*\[::1\]:9125"),
        ('metrics_listen = true;\n',
         r":1: metrics_listen: expected a port or \"address:port\""),
    ]
    for text, expected in cases:
        done = check_config(smarthostd_binary, tmp_path, text + RELAY)
        assert done.returncode == EX_CONFIG, (text, done.stdout)
        assert re.search(r"smarthostd\.conf" + expected, done.stderr), \
            (text, done.stderr)
    for text in ('metrics_listen = 9125;\n',
                 'metrics_listen = "[::1]:9125";\n',
                 'metrics_listen = "0.0.0.0:9125";\n'
                 'allow_networks = [ "192.0.2.0/24" ];\n'):
        done = check_config(smarthostd_binary, tmp_path, text + RELAY)
        assert done.returncode == 0, (text, done.stderr)


def test_metrics_listen_from_the_environment(upstream, daemon_factory,
                                             smarthostd_binary, tmp_path):
    """SMARTHOSTD_METRICS_LISTEN (a sidecar's probe), over the file."""
    daemon = daemon_factory(upstream.port, metrics_listen="127.0.0.1:1",
                            env={"SMARTHOSTD_METRICS_LISTEN":
                                 "127.0.0.1:0"})
    assert get(metrics_port(daemon), "/health")[:1] == (200,)
    path = tmp_path / "smarthostd.conf"
    path.write_text(RELAY)
    done = subprocess.run(
        [smarthostd_binary, "-t", "-c", str(path)], capture_output=True,
        text=True, timeout=30,
        env=dict(os.environ, SMARTHOSTD_METRICS_LISTEN="0.0.0.0:9125"))
    assert done.returncode == EX_CONFIG
    assert "SMARTHOSTD_METRICS_LISTEN: metrics_listen: 0.0.0.0 is not " \
        "loopback" in done.stderr, done.stderr


def test_any_address_with_allow_networks_serves_loopback(upstream,
                                                         daemon_factory):
    daemon = daemon_factory(upstream.port, metrics_listen="0.0.0.0:0",
                            allow_networks=["192.0.2.0/24"])
    port = int(daemon.wait_log(
        r"serving metrics and health on http://0\.0\.0\.0:(\d+)/",
        since=daemon.run_start).group(1))
    assert get(port, "/health")[:1] == (200,)


# One GET from a source address, inside the daemon's network namespace:
# prints the status, then the body.
GET_FROM = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[2], int(sys.argv[3]), timeout=10,
                                  source_address=(sys.argv[1], 0))
conn.request("GET", sys.argv[4])
resp = conn.getresponse()
print(resp.status)
sys.stdout.write(resp.read().decode())
"""


def test_peer_outside_allow_networks_gets_403(upstream, daemon_factory):
    """metrics_listen on every address with allow_networks 10.0.0.0/8,
    the daemon in a network namespace of its own whose loopback device
    also has 192.0.2.1 and 10.1.2.3: a scrape from 192.0.2.1 gets 403 and
    no metrics, one from 10.1.2.3 or from loopback gets them."""
    daemon = daemon_factory(upstream.port, start=False,
                            metrics_listen="0.0.0.0:9125",
                            allow_networks=["10.0.0.0/8"])
    daemon_spawn_in_netns(daemon, ["192.0.2.1", "10.1.2.3"])
    daemon_wait_started(daemon)
    daemon.wait_log(r"serving metrics and health on http://0\.0\.0\.0:9125/",
                    since=daemon.run_start)

    def get_from(source, path="/metrics", to="192.0.2.1"):
        done = netns_run(daemon, ["/usr/bin/python3", "-c", GET_FROM,
                                  source, to, "9125", path])
        assert done.returncode == 0, done.stderr
        status, _, body = done.stdout.partition("\n")
        return int(status), body

    status, body = get_from("192.0.2.1")
    assert (status, body) == (403, "not in allow_networks\n")
    assert get_from("192.0.2.1", "/health") == (403,
                                                "not in allow_networks\n")
    daemon.wait_log(r"metrics: GET /metrics from 192\.0\.2\.1: 403")
    for source, to in (("10.1.2.3", "192.0.2.1"), ("127.0.0.1", "127.0.0.1"),
                       ("192.0.2.1", "127.0.0.1")):
        status, body = get_from(source, to=to)
        if source == "192.0.2.1":
            # A loopback destination does not make the peer loopback.
            assert status == 403, (source, to, body)
            continue
        assert status == 200, (source, to, body)
        assert "smarthostd_queue_messages" in body, body
    assert daemon.running()


def test_maildrop_imports_count_as_accepted(upstream, daemon_factory,
                                            smarthostd_binary):
    postdrop = os.path.join(os.path.dirname(smarthostd_binary),
                            "smarthost-postdrop")
    if os.geteuid() == 0:
        ensure_group()
    daemon = daemon_factory(upstream.port, maildrop_group=DROP_GROUP,
                            metrics_listen="127.0.0.1:0")
    port = metrics_port(daemon)
    sender = f"root@{HOSTNAME}"
    done = subprocess.run(
        [postdrop, "-C", daemon.config_path, "-f", sender, "--",
         "b@example.net"],
        input=make_message("dropped", "Through the maildrop.\n",
                           sender=sender),
        capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    upstream.wait_messages(1, timeout=20)
    send_message(daemon, make_message("smtp", "Over SMTP.\n"))
    upstream.wait_messages(2, timeout=20)
    # A delivered message stays queued until its removal is written,
    # a few milliseconds after the upstream's reply: two scrapes agree
    # only once nothing moves.
    wait_until(lambda: len(daemon.log_lines(r": removed")) == 2, 20,
               "2 removals")
    samples = samples_of(scrape_http(port)[1])
    assert samples[("smarthostd_accepted_total",
                    (("source", "maildrop"),))] == 1
    assert samples[("smarthostd_accepted_total",
                    (("source", "smtp"),))] == 1
    assert samples_of(ctl_metrics(daemon)) == samples
