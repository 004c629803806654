"""Operating the relay: delay warnings to the sender of stuck mail."""

from harness import (delivery_line, dsn_recipient_fields, make_message,
                     send_message, wait_until)

SENDER = "a@example.org"
SLOW = "slow@example.net"


def test_delay_warning_is_sent_once(upstream_factory, daemon_factory):
    # The upstream defers the original's recipient but takes the warning.
    upstream = upstream_factory(
        rcpt_replies={SLOW: "451 4.3.0 mailbox busy, try later"})
    daemon = daemon_factory(upstream.port,
                            queue={"delay_warning": "2s"})
    qid = send_message(daemon, make_message("slow one", "Stuck.\n"),
                       recipients=(SLOW,))

    warning, = upstream.wait_messages(1, timeout=20)
    assert warning.mail_from == ""
    assert warning.rcpt_tos == [SENDER]
    report = warning.parsed()
    assert report["Subject"] == "Delayed Mail (still being retried)"
    assert report.get_content_type() == "multipart/report"
    fields = dsn_recipient_fields(report)
    assert len(fields) == 1, fields
    assert SLOW in fields[0]["final-recipient"]
    assert fields[0]["action"].lower() == "delayed"
    assert fields[0]["status"] == "4.3.0"
    assert "will-retry-until" in fields[0], fields[0]
    assert "451 4.3.0 mailbox busy" in fields[0]["diagnostic-code"]
    daemon.wait_log(rf"{qid}: sender delay notification: [0-9A-F]{{16}}")

    # More attempts (retry_max is 4 s) bring no second warning.
    deferred = delivery_line(qid, SLOW, "deferred")
    seen = len(daemon.log_lines(deferred))
    wait_until(lambda: len(daemon.log_lines(deferred)) >= seen + 2, 20,
               "two more deferrals")
    upstream.assert_count_stays(1, settle=1)

    # ... nor does a restart: the flag is in the queue file.
    daemon.terminate()
    daemon.start()
    daemon.flush()
    daemon.wait_log(delivery_line(qid, SLOW, "deferred"),
                    since=daemon.run_start)
    upstream.assert_count_stays(1, settle=5)
    assert len(daemon.log_lines(r"sender delay notification")) == 1


def test_no_delay_warning_to_the_null_sender(upstream_factory,
                                             daemon_factory):
    upstream = upstream_factory(
        rcpt_replies={SLOW: "451 4.3.0 mailbox busy, try later"})
    daemon = daemon_factory(upstream.port,
                            queue={"delay_warning": "1s"})
    qid = send_message(daemon, make_message("from <>", "A bounce.\n"),
                       sender="", recipients=(SLOW,))
    daemon.wait_log(delivery_line(qid, SLOW, "deferred"))
    upstream.assert_count_stays(0, settle=5)
    assert not daemon.log_lines("sender delay notification")
