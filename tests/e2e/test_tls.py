"""The relay never sends mail over a connection it cannot trust, and
resumes TLS sessions and reuses connections only where that holds."""

import os
import shutil
import signal

from authharness import run_ctl, smarthostctl_binary
from harness import (delivery_line, make_message, merge_settings,
                     render_config, rewrite_config, send_message,
                     smtp_client, submit)

RCPT = "b@example.net"


def submit_and_expect_deferral(upstream, daemon, reason):
    """Submits one message, waits for its deferral with a reason matching
    the regex reason, and checks that the upstream got no transaction."""
    qid = send_message(daemon, make_message("must not leave", "Secret.\n"))
    daemon.wait_log(delivery_line(qid, RCPT, "deferred") + rf" \({reason}")
    assert upstream.messages == []
    assert upstream.handler.mail_commands == 0, "MAIL sent anyway"
    assert not daemon.log_lines(rf"{qid}: .*status=(sent|bounced)")


def test_certificate_from_unknown_ca(upstream_factory, daemon_factory):
    upstream = upstream_factory(tls="rogue")
    daemon = daemon_factory(upstream.port)
    submit_and_expect_deferral(upstream, daemon,
                               r".*certificate verify failed")


def test_certificate_for_another_host(upstream_factory, daemon_factory):
    upstream = upstream_factory(tls="misnamed")
    daemon = daemon_factory(upstream.port)
    submit_and_expect_deferral(upstream, daemon, r"TLS\b.*mismatch")


def test_implicit_tls_from_an_unknown_ca(upstream_factory, daemon_factory):
    """TLS from the first byte (port 465 style) verifies the certificate
    as STARTTLS does: nothing is sent to a server it cannot trust."""
    upstream = upstream_factory(tls="rogue", implicit=True)
    daemon = daemon_factory(upstream.port,
                            relays={"upstream": {"tls": "implicit"}})
    submit_and_expect_deferral(upstream, daemon,
                               r".*certificate verify failed")


def test_starttls_not_offered(upstream_factory, daemon_factory):
    upstream = upstream_factory(tls=None)
    daemon = daemon_factory(upstream.port)
    submit_and_expect_deferral(upstream, daemon, r".*STARTTLS")


# --------------------------------------------------------------------------
# Session resumption and connection reuse, against aiosmtpd's TLS (Python's
# ssl module: TLS 1.3 tickets, keys per server context). Whether a
# handshake resumed is what the upstream's SSLObject says.

def send_in_turn(daemon, upstream, count, subject):
    """Sends count messages one after another, each once the last reached
    the upstream (a lone client's pattern); returns the upstream's
    messages of this call."""
    before = len(upstream.messages)
    for i in range(count):
        qid = send_message(daemon, make_message(f"{subject} {i}", "Hi.\n"))
        upstream.wait_messages(before + i + 1)
        daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    return upstream.messages[before:]


def no_reuse(**relay):
    """Relay overrides for one connection per message."""
    return {"relays": {"upstream": {"timeout_idle": 0, **relay}}}


def three_connections_two_resumed(daemon, upstream):
    """Three messages, one connection each: the first makes the full
    handshake, the two others resume its session."""
    got = send_in_turn(daemon, upstream, 3, "resume")
    assert len({m.peer for m in got}) == 3, "one connection per message"
    assert all(m.tls for m in got)
    assert [m.tls_resumed for m in got] == [False, True, True]
    assert len(daemon.log_lines(r"relay=\S+ connected, TLSv1\.3 \S+, "
                                r"full handshake")) == 1
    assert len(daemon.log_lines(r"relay=\S+ connected, TLSv1\.3 \S+, "
                                r"session resumed")) == 2


def test_later_connections_resume_the_tls_session(upstream, daemon_factory):
    daemon = daemon_factory(upstream.port, **no_reuse())
    three_connections_two_resumed(daemon, upstream)
    done = run_ctl(smarthostctl_binary(), daemon.config_path, "metrics")
    assert done.returncode == 0, done.stderr
    assert ('smarthostd_relay_connections_total{relay="upstream"} 3\n'
            in done.stdout), done.stdout
    assert ('smarthostd_relay_tls_resumed_total{relay="upstream"} 2\n'
            in done.stdout), done.stdout


def test_implicit_tls_connections_resume_the_session(upstream_factory,
                                                     daemon_factory):
    upstream = upstream_factory(implicit=True)
    daemon = daemon_factory(upstream.port, **no_reuse(tls="implicit"))
    three_connections_two_resumed(daemon, upstream)


def test_restarted_upstream_gets_a_full_handshake(upstream, daemon_factory):
    """A server that no longer knows the session (new ticket keys after a
    restart) refuses it: the handshake is a full one, verified, the mail
    goes, and the session it gave is resumed next."""
    daemon = daemon_factory(upstream.port, **no_reuse())
    got = send_in_turn(daemon, upstream, 2, "before")
    assert [m.tls_resumed for m in got] == [False, True]
    upstream.stop()
    upstream.start()
    got = send_in_turn(daemon, upstream, 2, "after")
    assert [m.tls_resumed for m in got] == [False, True]


def test_no_resumption_after_a_ca_change(upstream, daemon_factory, pki,
                                         tmp_path):
    """A reload that points ca_file elsewhere (here: the same CA in another
    file, so that verification passes either way) starts afresh: no
    session of the old settings is offered."""
    daemon = daemon_factory(upstream.port, **no_reuse())
    got = send_in_turn(daemon, upstream, 2, "old CA")
    assert [m.tls_resumed for m in got] == [False, True]
    moved = tmp_path / "moved-ca.pem"
    shutil.copyfile(pki.good.ca_cert, moved)
    since = os.path.getsize(daemon.log_path)
    rewrite_config(daemon, render_config(merge_settings(
        daemon.settings, no_reuse(ca_file=str(moved)))))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b", since=since)
    got = send_in_turn(daemon, upstream, 2, "new CA")
    assert [m.tls_resumed for m in got] == [False, True]


def test_rogue_server_behind_a_resumable_session_is_refused(
        upstream_factory, daemon_factory, pki):
    """The port that gave a session now has a server with a certificate
    from an unknown CA. It cannot resume our session (not its keys), and
    the full handshake fails verification: nothing is sent to it."""
    good = upstream_factory()
    daemon = daemon_factory(good.port, **no_reuse())
    send_in_turn(daemon, good, 1, "trusted")
    good.stop()
    rogue = upstream_factory(tls="rogue", start=False)
    rogue.port = good.port
    rogue.start()
    submit_and_expect_deferral(rogue, daemon, r".*certificate verify failed")


def test_one_connection_for_a_lone_clients_messages(upstream,
                                                    daemon_factory):
    """Message after message from one client, each sent once the last was
    relayed (the queue empty in between): one connection and one TLS
    handshake for all, held open timeout_idle (2 s by default) between
    them, then closed."""
    daemon = daemon_factory(upstream.port)
    got = send_in_turn(daemon, upstream, 4, "reuse")
    assert len({m.peer for m in got}) == 1, [m.peer for m in got]
    assert all(m.tls and not m.tls_resumed for m in got)
    assert len(daemon.log_lines(r"relay=\S+ connected, TLS")) == 1
    daemon.wait_log(r"idle session closes", timeout=10)
    daemon.wait_log(r"relay upstream: session \w+ -> closed", timeout=10)


def test_first_connections_wait_for_a_session_to_resume(upstream_factory,
                                                        daemon_factory):
    """Six messages due at once (a flush after the upstream came back)
    for a relay with no TLS session yet, one connection each
    (max_messages_per_connection 1, max_connections 4): the first
    connection makes the only full handshake; the others open once it is
    up, and resume the session it got."""
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port,
                            queue={"retry_min": 600, "retry_max": 3600},
                            relays={"upstream": {
                                "max_connections": 4,
                                "max_messages_per_connection": 1}})
    client = smtp_client(daemon)
    qids = [submit(client, "a@example.org", [RCPT],
                   make_message(f"at once {i}", "Hi.\n"))
            for i in range(6)]
    client.quit()
    daemon.wait_log(delivery_line(qids[0], RCPT, "deferred"))

    upstream.start()
    daemon.flush()
    got = upstream.wait_messages(6)
    for qid in qids:
        daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    assert len({m.peer for m in got}) == 6, "one connection per message"
    assert sorted(m.tls_resumed for m in got) == [False] + [True] * 5
    assert len(daemon.log_lines(r"relay=\S+ connected, TLS\S* \S+, "
                                r"full handshake")) == 1
