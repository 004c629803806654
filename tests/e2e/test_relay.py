"""Retries, bounces and crash safety of the queue and relay."""

import errno
import re
import socket
import time

import pytest

from harness import (RecordingHandler, assert_relayed, delivery_line,
                     dsn_recipient_fields, make_message, send_message,
                     smtp_client, submit)

SENDER = "a@example.org"
RCPT = "b@example.net"


def test_upstream_down_at_submission(upstream_factory, daemon_factory):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port)
    message = make_message("upstream down", "Deferred first, sent later.\n")
    qid = send_message(daemon, message)
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"))

    upstream.start()
    # No flush: the scheduler's own retry (retry_min 1 s, retry_max 4 s in
    # the test config) must deliver it, relay backoff included.
    msg, = upstream.wait_messages(1, timeout=20)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    daemon.wait_log(rf"{qid}: removed")


def test_flush_ignores_backoff(upstream_factory, daemon_factory):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port,
                            queue={"retry_min": 600, "retry_max": 3600})
    message = make_message("flush", "SIGUSR1 makes it due now.\n")
    qid = send_message(daemon, message)
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"))

    upstream.start()
    daemon.flush()
    msg, = upstream.wait_messages(1, timeout=10)
    assert_relayed(msg, message)


def test_temporary_failure_is_retried(upstream_factory, daemon_factory):
    upstream = upstream_factory(data_replies=["451 4.3.0 try later"])
    daemon = daemon_factory(upstream.port)
    message = make_message("4xx then 2xx", "Second time lucky.\n")
    qid = send_message(daemon, message)

    # No flush: the scheduler's own retry (retry_min = 1 s) must do it.
    msg, = upstream.wait_messages(1, timeout=15)
    assert_relayed(msg, message)
    assert upstream.handler.data_commands == 2
    deferred = daemon.wait_log(delivery_line(qid, RCPT, "deferred")
                               + r" \(451 4\.3\.0 try later")
    sent = daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    assert deferred.start() < sent.start()


def test_permanent_failure_bounces_to_sender(upstream_factory,
                                             daemon_factory):
    good, bad = "good@example.net", "bad@example.net"
    upstream = upstream_factory(
        rcpt_replies={bad: "550 5.1.1 no such user"})
    daemon = daemon_factory(upstream.port)
    message = make_message("one bad recipient", "Half of this fails.\n",
                           recipient=good)
    qid = send_message(daemon, message, recipients=(good, bad))

    messages = upstream.wait_messages(2, timeout=20)
    originals = [m for m in messages if m.mail_from]
    bounces = [m for m in messages if not m.mail_from]
    assert len(originals) == 1 and len(bounces) == 1, messages
    assert originals[0].mail_from == SENDER
    assert originals[0].rcpt_tos == [good]
    assert_relayed(originals[0], message)

    dsn = bounces[0]
    assert dsn.rcpt_tos == [SENDER]
    report = dsn.parsed()
    assert "mailer-daemon" in report["From"].lower(), report["From"]
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    fields = dsn_recipient_fields(report)
    failed = [f for f in fields if bad in f["final-recipient"]]
    assert len(failed) == 1, fields
    assert failed[0].get("action", "").lower() == "failed"
    assert failed[0].get("status", "").startswith("5.1.1")
    assert not [f for f in fields if good in f["final-recipient"]]

    daemon.wait_log(delivery_line(qid, good, "sent"))
    daemon.wait_log(delivery_line(qid, bad, "bounced")
                    + r" \(550 5\.1\.1 no such user")
    daemon.wait_log(rf"{qid}: sender non-delivery notification: "
                    r"[0-9A-F]{16}")
    upstream.assert_count_stays(2, settle=1)


def test_no_bounce_to_null_sender(upstream_factory, daemon_factory):
    bad = "bad@example.net"
    upstream = upstream_factory(
        rcpt_replies={bad: "550 5.1.1 no such user"})
    daemon = daemon_factory(upstream.port)
    qid = send_message(daemon, make_message("from <>", "A bounce.\n"),
                       sender="", recipients=(bad,))
    daemon.wait_log(delivery_line(qid, bad, "bounced"))
    daemon.wait_log(rf"{qid}: removed")
    upstream.assert_count_stays(0, settle=2)
    assert not daemon.log_lines("sender non-delivery notification")


def test_crash_right_after_acceptance(upstream_factory, daemon_factory):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port)
    message = make_message("kill -9", "Acknowledged, so it must survive.\n")
    client = smtp_client(daemon)
    qid = submit(client, SENDER, [RCPT], message)
    daemon.kill()
    client.close()

    daemon.start()
    upstream.start()
    daemon.flush()
    msg, = upstream.wait_messages(1, timeout=20)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"), since=daemon.run_start)
    upstream.assert_count_stays(1, settle=3)


def test_upstream_down_keeps_its_port(upstream_factory):
    """An upstream not running holds its port, refusing connections, so a
    daemon started meanwhile cannot get it for its own listener (port 0):
    test_crash_right_after_acceptance once failed so, its restarted daemon
    listening on the port its upstream was to start on."""
    upstream = upstream_factory(start=False)
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            with pytest.raises(OSError) as e:
                other.bind(("127.0.0.1", upstream.port))
            assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", upstream.port),
                                     timeout=5).close()
        upstream.start()
        socket.create_connection(("127.0.0.1", upstream.port),
                                 timeout=5).close()
        upstream.stop()


def test_restart_keeps_recipient_state(upstream_factory, daemon_factory):
    now, later = "now@example.net", "later@example.net"
    upstream = upstream_factory(
        rcpt_replies={later: "451 4.2.1 mailbox busy"})
    daemon = daemon_factory(upstream.port)
    message = make_message("two recipients", "One now, one after restart.\n",
                           recipient=now)
    qid = send_message(daemon, message, recipients=(now, later))

    first, = upstream.wait_messages(1)
    assert first.rcpt_tos == [now]
    daemon.wait_log(delivery_line(qid, now, "sent"))
    deferred = daemon.wait_log(delivery_line(qid, later, "deferred"))
    # The kill comes the moment the daemon reports the attempt's state
    # record synced (the scheduler takes the message back only then), not
    # after a grace period that would hide a record written late.
    daemon.wait_log(re.escape(f"{qid}: scheduler finishing -> waiting"),
                    since=deferred.end())
    daemon.kill()

    upstream.handler.rcpt_replies.clear()
    daemon.start()
    daemon.flush()
    messages = upstream.wait_messages(2, timeout=20)
    assert messages[1].rcpt_tos == [later], "accepted recipient re-sent"
    assert_relayed(messages[1], message)
    daemon.wait_log(delivery_line(qid, later, "sent"), since=daemon.run_start)
    upstream.assert_count_stays(2, settle=3)


def test_drop_after_final_dot_is_retried_and_counted(upstream_factory,
                                                     daemon_factory):
    """The upstream stores the message and hangs up before answering the
    final dot. The daemon cannot know it has the message: it retries (a
    loss would be worse), and its log says a duplicate may follow. This
    is the duplicate window SMTP itself leaves open; here it is counted:
    exactly one duplicate, and no more once the upstream answers."""
    rcpt = "b@example.net"
    upstream = upstream_factory(
        data_replies=[RecordingHandler.STORE_THEN_DROP])
    daemon = daemon_factory(upstream.port)
    message = make_message("dropped after the dot", "Sent twice, at most.\n")
    qid = send_message(daemon, message)
    deferred = daemon.wait_log(delivery_line(qid, rcpt, "deferred") + ".*")
    assert "may deliver it twice" in deferred.group(0), deferred.group(0)
    daemon.wait_log(delivery_line(qid, rcpt, "sent"), timeout=20)
    messages = upstream.wait_messages(2)
    upstream.assert_count_stays(2, settle=2)
    for relayed in messages:
        assert_relayed(relayed, message)
    duplicates = len(messages) - 1
    assert duplicates == 1, f"{duplicates} duplicates"


@pytest.mark.parametrize("tls, reset", [("good", False), (None, True)],
                         ids=["starttls-close", "plain-reset"])
def test_reused_connection_gone_sends_again_at_once(upstream_factory,
                                                    daemon_factory, tls,
                                                    reset):
    """The upstream's idle timeout (0.5 s) strikes just as the next
    message's MAIL arrives on the connection the relay held open
    (timeout_idle 30 s): the server hangs up on it without a word. The
    message is no attempt: it goes at once on a new connection instead of
    waiting retry_min (600 s), arrives once, and is never logged
    deferred."""
    upstream = upstream_factory(tls=tls, idle_limit=0.5, idle_reset=reset)
    relay = {"timeout_idle": 30}
    if tls is None:
        relay["tls"] = "none"
    daemon = daemon_factory(upstream.port, relays={"upstream": relay},
                            queue={"retry_min": 600, "retry_max": 3600})
    first = make_message("first", "On a new connection.\n")
    qid1 = send_message(daemon, first)
    daemon.wait_log(delivery_line(qid1, RCPT, "sent"))
    time.sleep(1.0)

    second = make_message("second", "On the held one, then a new one.\n")
    qid2 = send_message(daemon, second)
    # far below retry_min: not deferred
    got = upstream.wait_messages(2, timeout=10)
    daemon.wait_log(delivery_line(qid2, RCPT, "sent"))
    assert upstream.handler.idle_drops == 1
    assert_relayed(got[0], first)
    assert_relayed(got[1], second)
    assert got[0].peer != got[1].peer, "the second on a new connection"
    daemon.wait_log(rf"{qid2}: relay=\S+: the reused connection was gone "
                    r"before the server answered \(.*\); not an attempt")
    assert not daemon.log_lines(rf"{qid2}: .*status=deferred")
    upstream.assert_count_stays(2, settle=1.0)
