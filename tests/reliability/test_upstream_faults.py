"""Upstream faults, each in turn: the upstream closes mid-DATA, closes after
the final dot before replying, says 421 at connect, stalls (says nothing,
sends one byte a second, or stops reading in the middle of a large
message), sends an endless multi-line reply, a reply without a line end,
fails the TLS handshake, presents an expired or a wrong-host certificate;
and a relay name that does not resolve. For each:
the mail is deferred (logged status=deferred), then delivered once the
upstream behaves; the acceptance latency of clients during the fault is
measured against normal (figures; not asserted, as speed never is).

Short (make check): 2 messages per fault. Long: 10.
"""

import os
import re
import signal
import statistics
import subprocess
import time

from conftest import scale
from faultserver import FAULTS, FaultServer
from harness import (CertPair, delivery_line, make_message, random_body,
                     render_config, rewrite_config, send_message, wait_until)

TOKEN_RE = re.compile(rb"Subject: fault (\S+)\r\n")
# The reason each fault must be deferred for, as the log line gives it.
REASONS = {
    "close_mid_data": r"connection closed",
    "close_after_dot": r"connection closed",
    "greet_421": r"421 4\.3\.2 fault\.test busy",
    "stall_silent": r"timeout .* greeting",
    "stall_trickle": r"timeout .* greeting",
    "stall_mid_data": r"timeout .* to take the message body",
    "endless_multiline": r"timeout .* EHLO|too long|too many",
    "no_crlf": r"timeout .* greeting",
    "tls_garbage": r"TLS",
    "tls_expired": r"certificate has expired",
    "tls_wrong_host": r"IP address mismatch|hostname mismatch",
    "unresolvable": r"cannot resolve relay\.invalid",
}
RCPT = "b@example.net"
# The faults whose first message is large: its body must outgrow the
# socket buffers between the daemon and the upstream (the daemon's send
# buffer grows to 4 MiB, net.ipv4.tcp_wmem), so that the daemon is left
# with part of it unsent when the upstream stops reading.
LARGE_FIRST = {"stall_mid_data": 12 * 1024 * 1024}


def expired_cert(ca_pair, directory):
    """A certificate for localhost and 127.0.0.1 from the trusted CA that
    expired days ago (issued under faketime)."""
    ca_dir = os.path.dirname(ca_pair.ca_cert)
    ca_key = ca_pair.ca_cert[:-len("-ca.pem")] + "-ca.key"
    cnf = os.path.join(ca_dir, "openssl.cnf")
    key = os.path.join(directory, "expired.key")
    csr = os.path.join(directory, "expired.csr")
    cert = os.path.join(directory, "expired.pem")
    env = dict(os.environ, SHD_SAN="DNS:localhost, IP:127.0.0.1, IP:::1")
    subprocess.run(["openssl", "req", "-config", cnf, "-new", "-newkey",
                    "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj",
                    "/CN=smarthostd expired test server"],
                   check=True, capture_output=True, env=env, timeout=60)
    subprocess.run(["faketime", "-f", "-10d", "openssl", "x509", "-req",
                    "-in", csr, "-CA", ca_pair.ca_cert, "-CAkey", ca_key,
                    "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                    "-extfile", cnf, "-extensions", "v3_server", "-days", "2",
                    "-out", cert],
                   check=True, capture_output=True, env=env, timeout=60)
    return CertPair(ca_cert=ca_pair.ca_cert, cert=cert, key=key)


class Run:
    def __init__(self, daemon, upstream, fault):
        self.daemon = daemon
        self.upstream = upstream
        self.fault = fault
        self.sent = {}

    def submit(self, label, size=None):
        """One message (a random body of about size bytes if given);
        returns (qid, seconds the transaction took)."""
        token = f"{label}-{os.urandom(4).hex()}"
        message = make_message(f"fault {token}", "A fault test.\n"
                               if size is None else random_body(size))
        started = time.monotonic()
        qid = send_message(self.daemon, message, timeout=30)
        took = time.monotonic() - started
        self.sent[token] = message
        return qid, took

    def arrived(self):
        got = {}
        for m in self.upstream.messages:
            token = TOKEN_RE.search(m.content).group(1).decode()
            got.setdefault(token, []).append(m)
        return got

    def wait_delivered(self, timeout=90):
        def done():
            return set(self.sent) <= set(self.arrived())
        wait_until(done, timeout, "every message at the upstream")


def test_upstream_faults(daemon_factory, upstream_factory, pki, tmp_path,
                         figures):
    per_fault = scale(2, 10)
    upstream = upstream_factory()
    fault = FaultServer(upstream.port, pki.good,
                        expired_cert(pki.good, str(tmp_path)), pki.misnamed)
    try:
        # Each fault belongs to a connection, set when it is accepted:
        # every message opens its own (no idle connection to reuse).
        daemon = daemon_factory(
            fault.port,
            relays={"upstream": {"timeout_connect": 3, "timeout_command": 3,
                                 "timeout_data": 3, "timeout_idle": 0}},
            queue={"retry_min": 1, "retry_max": 2})
        run = Run(daemon, upstream, fault)
        normal = [run.submit("normal")[1] for _ in range(per_fault + 3)]
        run.wait_delivered()
        results = {}
        faults = [*FAULTS, "unresolvable"]
        for mode in faults:
            results[mode] = one_fault(run, mode, per_fault)
        run.wait_delivered()
        upstream.assert_count_stays(len(upstream.messages), settle=1)
    finally:
        fault.close()
    arrived = run.arrived()
    swallowed = {}
    for data in fault.swallowed:
        match = TOKEN_RE.search(data)
        if match:
            token = match.group(1).decode()
            swallowed[token] = swallowed.get(token, 0) + 1
    duplicates = sum(len(v) - 1 for v in arrived.values()) + \
        sum(swallowed.values())
    corrupted = [t for t, msgs in arrived.items()
                 if not all(m.content.endswith(run.sent[t]) for m in msgs)]
    base = statistics.median(normal)
    figures(faults=len(faults), messages=len(run.sent),
            lost=len(set(run.sent) - set(arrived)),
            corrupted=len(corrupted), duplicates=duplicates,
            swallowed_by_faulty_upstream=sum(swallowed.values()),
            normal_acceptance_ms=round(base * 1000, 1),
            **{f"{mode}_acceptance_ms": round(r["latency"] * 1000, 1)
               for mode, r in results.items()},
            **{f"{mode}_ratio": round(r["latency"] / base, 2)
               for mode, r in results.items()},
            **{f"{mode}_deferred_s": round(r["deferred_after"], 1)
               for mode, r in results.items()})
    assert not corrupted


def one_fault(run, mode, count):
    """Submits count messages while the upstream has fault mode; checks
    the first is deferred for it and all are delivered once it behaves.
    Returns the median acceptance latency and the time to the deferral."""
    daemon = run.daemon
    since = os.path.getsize(daemon.log_path)
    if mode == "unresolvable":
        settings = dict(daemon.settings)
        relay = dict(settings["relays"]["upstream"], host="relay.invalid")
        settings["relays"] = {"upstream": relay}
        rewrite_config(daemon, render_config(settings))
        daemon.signal(signal.SIGHUP)
        daemon.wait_log(r"\breloaded$", timeout=10, since=since)
    else:
        run.fault.mode = mode
    started = time.monotonic()
    qid, first = run.submit(mode, LARGE_FIRST.get(mode))
    # A large message takes longer to submit for its size alone: only the
    # small ones after it say how the fault delays acceptance.
    latencies = [] if mode in LARGE_FIRST else [first]
    # While the daemon is stuck on (or backing off from) the fault.
    for _ in range(count - 1):
        latencies.append(run.submit(mode)[1])
    line = daemon.wait_log(delivery_line(qid, RCPT, "deferred") + ".*",
                           timeout=60, since=since).group(0)
    assert re.search(REASONS[mode], line), f"{mode}: {line}"
    if mode in LARGE_FIRST:
        # The end of the data never left the daemon: no duplicate window.
        assert "may deliver it twice" not in line, f"{mode}: {line}"
    deferred_after = time.monotonic() - started
    assert not any(TOKEN_RE.search(m.content).group(1).decode().startswith(
        mode + "-") for m in run.upstream.messages), \
        f"{mode}: delivered through the fault"
    if mode == "unresolvable":
        again = os.path.getsize(daemon.log_path)
        rewrite_config(daemon, render_config(daemon.settings))
        daemon.signal(signal.SIGHUP)
        daemon.wait_log(r"\breloaded$", timeout=10, since=again)
    run.fault.mode = "good"
    daemon.flush()
    run.wait_delivered()
    return {"latency": statistics.median(latencies),
            "deferred_after": deferred_after}
