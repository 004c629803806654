"""Several accounts and relays (issue 6): sender-dependent routing and
failover to backup relays, checked at real upstreams on loopback.

Routing: each sender arrives at its own upstream, logged in with its own
account (the relay's user picks the authinfo entry); domain and regexp
rules, matched against the sender after sender rewriting; a reload
re-routes queued mail. Failover: the primary down for failover_after sends
its mail through the backup, and mail returns to the primary once it is
back; a server that answers (a 5xx greeting, a 4xx or 5xx to RCPT) never
fails over.
"""

import os
import re
import signal
import socket
import threading
import time

import pytest

from authharness import (authinfo_line, ctl_fields, new_password, run_ctl,
                         write_authinfo)
from test_auth import assert_no_secret
from harness import (base_settings, delivery_line, make_message,
                     merge_settings, render_config, rewrite_config,
                     send_message, wait_until)

RCPT = "b@example.net"
WORK = "me@work.example"
HOME = "me@home.example"
FAILOVER_LINE = r"relay upstream: unreachable for (\d+)s; failing over to " \
    r"spare"
RETURN_LINE = r"relay upstream: reachable again; its mail returns from " \
    r"the backup relays"

pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")


def relay_to(pki, port, **extra):
    """The settings of an SMTP relay to 127.0.0.1:port like the test
    config's own (STARTTLS, the test CA), with extra merged in."""
    relay = dict(base_settings("", port, pki.good.ca_cert)
                 ["relays"]["upstream"])
    relay.update(extra)
    return relay


def relay_states(ctl, daemon):
    """smarthostctl status's relay lines as {name: "state ..."}."""
    status = run_ctl(ctl, daemon.config_path, "status")
    assert status.returncode == 0, status.stderr
    return dict(line.split(" ", 1)
                for line in ctl_fields(status.stdout).get("relay", []))


def send_from(daemon, sender, subject):
    message = make_message(subject, f"Body of {subject}.\n", sender=sender)
    return send_message(daemon, message, sender=sender), message


class GreetingServer:
    """A TCP server on 127.0.0.1 that answers every connection with one
    greeting line, then waits (2 s at most) for the client to talk or
    hang up, and closes. connections counts those it greeted."""

    def __init__(self, greeting):
        self.greeting = greeting.encode() + b"\r\n"
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            with conn:
                self.connections += 1
                conn.settimeout(2)
                try:
                    conn.sendall(self.greeting)
                    conn.recv(512)
                except OSError:
                    pass

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def greeting_server():
    made = []

    def make(greeting):
        server = GreetingServer(greeting)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


# --------------------------------------------------------------------------
# Routing

def test_each_sender_through_its_own_account(auth_upstream_factory,
                                             daemon_factory, authinfo, pki):
    work_pw, home_pw = new_password("work"), new_password("home")
    work = auth_upstream_factory({WORK: work_pw})
    home = auth_upstream_factory({HOME: home_pw})
    # Entries without a port, the home one first: only each relay's user
    # tells them apart (without it, both relays would log in as HOME).
    write_authinfo(authinfo,
                   authinfo_line("127.0.0.1", None, HOME, home_pw)
                   + authinfo_line("127.0.0.1", None, WORK, work_pw))
    daemon = daemon_factory(
        home.port, authinfo=[authinfo],
        relays={"upstream": {"user": HOME},
                "work": relay_to(pki, work.port, user=WORK)},
        routes=[{"sender": WORK, "relay": "work"}])

    qid_w, _ = send_from(daemon, WORK, "from work")
    qid_h, _ = send_from(daemon, HOME, "from home")
    daemon.wait_log(delivery_line(qid_w, RCPT, "sent"), timeout=15)
    daemon.wait_log(delivery_line(qid_h, RCPT, "sent"), timeout=15)

    got_w = work.wait_messages(1)
    got_h = home.wait_messages(1)
    assert [m.mail_from for m in got_w] == [WORK]
    assert [m.mail_from for m in got_h] == [HOME]
    assert work.handler.attempts and \
        all(login == WORK and ok for _, login, ok in work.handler.attempts), \
        work.describe()
    assert home.handler.attempts and \
        all(login == HOME and ok for _, login, ok in home.handler.attempts), \
        home.describe()
    assert daemon.log_lines(
        rf"{qid_w}: to=<{re.escape(RCPT)}>, relay=127\.0\.0\.1\[127\.0\.0\.1"
        rf"\]:{work.port}, .*status=sent")
    assert_no_secret(daemon.log(), (WORK, work_pw), (HOME, home_pw))


def test_domain_and_regexp_rules(upstream_factory, daemon_factory, pki):
    home, work, lists = (upstream_factory() for _ in range(3))
    daemon = daemon_factory(
        home.port,
        relays={"work": relay_to(pki, work.port),
                "lists": relay_to(pki, lists.port)},
        routes=[{"regexp": "^list-[a-z]+@", "relay": "lists"},
                {"domain": "work.example", "relay": "work"}])

    senders = {"me@work.example": work, "Boss@WORK.Example": work,
               "list-dev@work.example": lists, "LIST-ops@home.example": lists,
               "me@home.example": home, "me@sub.work.example": home}
    qids = [send_from(daemon, sender, f"from {sender}")[0]
            for sender in senders]
    for qid in qids:
        daemon.wait_log(delivery_line(qid, RCPT, "sent"), timeout=15)
    for upstream in (home, work, lists):
        want = sorted(s for s, u in senders.items() if u is upstream)
        got = upstream.wait_messages(len(want))
        assert sorted(m.mail_from for m in got) == want


def test_route_matches_the_rewritten_sender(upstream_factory, daemon_factory,
                                            pki, tmp_path):
    """Routing sees the envelope sender as queued: a local sender that
    sender_rewrite maps to a work address goes to the work relay, one that
    masquerading puts in mail_domain to the default relay; a rule for the
    local name as submitted never matches."""
    home, work, other = (upstream_factory() for _ in range(3))
    sender_map = tmp_path / "sender-map"
    sender_map.write_text(f"jane: {WORK}\n", encoding="utf-8")
    daemon = daemon_factory(
        home.port, mail_domain="home.example",
        sender_rewrite={"map": str(sender_map), "masquerade": True},
        relays={"work": relay_to(pki, work.port),
                "other": relay_to(pki, other.port)},
        routes=[{"regexp": "^(jane|bob)(@localhost)?$", "relay": "other"},
                {"domain": "work.example", "relay": "work"}])

    qid_j, _ = send_from(daemon, "jane", "jane, rewritten")
    qid_b, _ = send_from(daemon, "bob@localhost", "bob, masqueraded")
    for qid in (qid_j, qid_b):
        daemon.wait_log(delivery_line(qid, RCPT, "sent"), timeout=15)
    assert [m.mail_from for m in work.wait_messages(1)] == [WORK]
    assert [m.mail_from for m in home.wait_messages(1)] == \
        ["bob@home.example"]
    other.assert_count_stays(0, settle=0.5)


def test_reload_reroutes_queued_mail(upstream_factory, daemon_factory, pki):
    """The route is taken at each attempt: mail queued for a relay that is
    down follows the new routes after a SIGHUP (and a flush, so that it
    need not wait for its retry)."""
    old = upstream_factory(start=False)
    work = upstream_factory()
    daemon = daemon_factory(old.port,
                            queue={"retry_min": "10m", "retry_max": "1h"},
                            relays={"work": relay_to(pki, work.port)})
    qid, _ = send_from(daemon, WORK, "queued before the reload")
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"))

    rewrite_config(daemon, render_config(merge_settings(
        daemon.settings, {"routes": [{"domain": "work.example",
                                      "relay": "work"}]})))
    since = os.path.getsize(daemon.log_path)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b", since=since)
    daemon.flush()
    got, = work.wait_messages(1)
    assert got.mail_from == WORK
    daemon.wait_log(
        rf"{qid}: to=<{re.escape(RCPT)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]"
        rf":{work.port}, .*status=sent")


# --------------------------------------------------------------------------
# Failover

def failover_daemon(daemon_factory, pki, primary_port, spare,
                    failover_after="2s"):
    """A daemon whose relay "upstream" (127.0.0.1:primary_port, the
    default) has the backup "spare"."""
    return daemon_factory(
        primary_port,
        relays={"upstream": {"backup": ["spare"],
                             "failover_after": failover_after},
                "spare": relay_to(pki, spare.port)})


def test_failover_to_backup_and_back(ctl, upstream_factory, daemon_factory,
                                     pki):
    primary = upstream_factory(start=False)
    spare = upstream_factory()
    daemon = failover_daemon(daemon_factory, pki, primary.port, spare)
    assert relay_states(ctl, daemon)["upstream"] == "up"

    qid, _ = send_from(daemon, "a@example.org", "while the primary is down")
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"))
    line = daemon.wait_log(FAILOVER_LINE, timeout=15)
    assert int(line.group(1)) >= 2, line.group(0)
    got, = spare.wait_messages(1)
    assert got.mail_from == "a@example.org"
    daemon.wait_log(
        rf"{qid}: to=<{re.escape(RCPT)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]"
        rf":{spare.port}, .*status=sent")
    state = relay_states(ctl, daemon)["upstream"]
    assert state.startswith("failed-over since="), state

    # Back up: a probe at the end of the primary's backoff (retry_max is
    # 4 s in the test config) finds it; new mail goes there again.
    primary.start()
    daemon.wait_log(RETURN_LINE, timeout=20)
    assert daemon.log_lines(r"relay upstream: probing whether it is "
                            r"reachable")
    # The probe that found it may still be saying QUIT ("up sessions=1").
    assert relay_states(ctl, daemon)["upstream"].split()[0] == "up"
    qid2, _ = send_from(daemon, "a@example.org", "after the recovery")
    daemon.wait_log(delivery_line(qid2, RCPT, "sent"), timeout=15)
    got, = primary.wait_messages(1)
    assert got.mail_from == "a@example.org"
    spare.assert_count_stays(1, settle=1.0)


def test_421_greeting_fails_over(greeting_server, upstream_factory,
                                 daemon_factory, pki):
    primary = greeting_server("421 4.3.2 Service not available")
    spare = upstream_factory()
    daemon = failover_daemon(daemon_factory, pki, primary.port, spare,
                             failover_after="1s")
    send_from(daemon, "a@example.org", "421 at connect")
    daemon.wait_log(FAILOVER_LINE, timeout=15)
    spare.wait_messages(1)
    assert primary.connections >= 1


def test_tls_failure_fails_over(upstream_factory, daemon_factory, pki):
    primary = upstream_factory(tls="rogue")  # a certificate we distrust
    spare = upstream_factory()
    daemon = failover_daemon(daemon_factory, pki, primary.port, spare,
                             failover_after="1s")
    qid, _ = send_from(daemon, "a@example.org", "TLS failure")
    daemon.wait_log(delivery_line(qid, RCPT, "deferred") + r".*TLS: ")
    daemon.wait_log(FAILOVER_LINE, timeout=15)
    got, = spare.wait_messages(1)
    assert got.tls
    assert primary.messages == []


def assert_never_failed_over(ctl, daemon, spare):
    spare.assert_count_stays(0, settle=1.0)
    assert not daemon.log_lines(r"failing over")
    # "up", with "sessions=1" while a connection waits idle for mail
    assert relay_states(ctl, daemon)["upstream"].split()[0] == "up"


def test_554_greeting_never_fails_over(ctl, greeting_server, upstream_factory,
                                       daemon_factory, pki):
    primary = greeting_server("554 5.3.2 No SMTP service here")
    spare = upstream_factory()
    daemon = failover_daemon(daemon_factory, pki, primary.port, spare,
                             failover_after="1s")
    qid, _ = send_from(daemon, "a@example.org", "554 at connect")
    # Retried on the primary, well past failover_after.
    wait_until(lambda: primary.connections >= 3, 20,
               "three attempts on the primary")
    daemon.wait_log(delivery_line(qid, RCPT, "deferred") + r".*554")
    assert_never_failed_over(ctl, daemon, spare)


@pytest.mark.parametrize("reply, status", [
    ("550 5.1.1 No such user", "bounced"),
    ("451 4.3.0 Try again later", "deferred"),
], ids=["5xx", "4xx"])
def test_rcpt_refusal_never_fails_over(ctl, upstream_factory, daemon_factory,
                                       pki, reply, status):
    primary = upstream_factory(rcpt_replies={RCPT: reply})
    spare = upstream_factory()
    daemon = failover_daemon(daemon_factory, pki, primary.port, spare,
                             failover_after="1s")
    start = time.monotonic()
    qid, _ = send_from(daemon, "a@example.org", f"RCPT {reply[:3]}")
    daemon.wait_log(delivery_line(qid, RCPT, status))
    if status == "deferred":
        wait_until(lambda: len(daemon.log_lines(
            delivery_line(qid, RCPT, "deferred"))) >= 2, 15,
            "a second attempt on the primary")
    else:
        # The bounce to the sender went through the primary too.
        primary.wait_messages(1)
    # Well past failover_after.
    wait_until(lambda: time.monotonic() - start >= 2.5, 5, "2.5 s")
    assert_never_failed_over(ctl, daemon, spare)
