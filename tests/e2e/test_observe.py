"""Operating the relay: delay warnings to the sender of stuck mail, and
the metrics smarthostctl reads from the daemon and metrics_listen serves
(test_metrics_http.py has the rest of the HTTP endpoint)."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from authharness import run_ctl, smarthostctl_binary
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
    assert daemon.terminate() == 0
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


def samples_of(text):
    """Prometheus text, parsed: {(sample name, labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def ctl_metrics(daemon):
    """What smarthostctl metrics prints."""
    done = run_ctl(smarthostctl_binary(), daemon.config_path, "metrics")
    assert done.returncode == 0, done.stderr
    return done.stdout


def scrape(daemon):
    """smarthostctl metrics, parsed."""
    return samples_of(ctl_metrics(daemon))


METRICS_LINE = r"serving metrics and health on http://127\.0\.0\.1:(\d+)/"


def metrics_port(daemon):
    """The port of the daemon's metrics_listen, from its log."""
    return int(daemon.wait_log(METRICS_LINE,
                               since=daemon.run_start).group(1))


def scrape_http(port):
    """GET /metrics with urllib, as a scraper: (Content-Type, text)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=10) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], resp.read().decode()


def test_metrics_count_a_known_mix(upstream_factory, daemon_factory):
    """Counted right, and the same over smarthostctl and HTTP."""
    good1, good2 = "good1@example.net", "good2@example.net"
    bad = "bad@example.net"
    upstream = upstream_factory(
        rcpt_replies={bad: "550 5.1.1 no such user",
                      SLOW: "451 4.3.0 mailbox busy, try later"})
    daemon = daemon_factory(upstream.port, metrics_listen="127.0.0.1:0")
    port = metrics_port(daemon)
    sent = send_message(daemon, make_message("two", "Two good.\n"),
                        recipients=(good1, good2))
    bounced = send_message(daemon, make_message("bad", "Bounces.\n"),
                           recipients=(bad,))
    slow = send_message(daemon, make_message("slow", "Deferred.\n"),
                        recipients=(SLOW,))
    daemon.wait_log(delivery_line(slow, SLOW, "deferred"))
    daemon.wait_log(rf"{bounced}: removed")
    daemon.wait_log(rf"{sent}: removed")
    # The upstream takes the slow recipient now.
    del upstream.handler.rcpt_replies[SLOW]
    daemon.flush()
    daemon.wait_log(rf"{slow}: removed", timeout=20)
    # The bounce's own delivery to the sender.
    wait_until(lambda: len(upstream.messages) == 3, 20, "3 messages")
    wait_until(lambda: len(daemon.log_lines(r"status=sent")) == 4, 20,
               "4 sent lines")
    wait_until(lambda: len(daemon.log_lines(r": removed")) == 4, 20,
               "4 removals")

    ctype, text = scrape_http(port)
    assert ctype == "text/plain; version=0.0.4"
    # The same code path as smarthostctl metrics: with nothing moving,
    # the very same text.
    assert ctl_metrics(daemon) == text
    samples = samples_of(text)
    relay = (("relay", "127.0.0.1"),)
    deferrals = len(daemon.log_lines(r"status=deferred"))
    assert deferrals >= 1
    assert samples[("smarthostd_accepted_total",
                    (("source", "smtp"),))] == 3
    assert samples[("smarthostd_accepted_total",
                    (("source", "maildrop"),))] == 0
    assert samples[("smarthostd_delivered_total", relay)] == 4
    assert samples[("smarthostd_deferred_total", relay)] == deferrals
    assert samples[("smarthostd_bounced_total", relay)] == 1
    assert samples.get(("smarthostd_expired_total", relay), 0) == 0
    assert samples.get(("smarthostd_auth_failures_total", relay), 0) == 0
    assert samples[("smarthostd_sessions_total", ())] == 3
    assert samples[("smarthostd_queue_messages", ())] == 0
    assert samples[("smarthostd_queue_oldest_age_seconds", ())] == 0
    assert samples[("smarthostd_commit_latency_seconds_count", ())] == 3
    assert samples[("smarthostd_delivery_latency_seconds_count", ())] == 4
    assert samples[("smarthostd_delivery_latency_seconds_bucket",
                    (("le", "+Inf"),))] == 4


def test_metrics_count_expiries(upstream_factory, daemon_factory):
    """A message that outlives its lifetime with its relay down: each
    deferral counted under the upstream's host, the expiry under
    relay="none", as the log lines say."""
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port,
                            queue={"lifetime": "2s", "retry_min": 1,
                                   "retry_max": 1})
    qid = send_message(daemon, make_message("expires", "Too late.\n"))
    daemon.wait_log(delivery_line(qid, "b@example.net", "expired"),
                    timeout=20)
    daemon.wait_log(rf"{qid}: removed")
    # The notification to the sender keeps being deferred meanwhile, and
    # expires in turn once it is 2 s old (sooner than the scrape on a
    # slow disk): each count lies between the log's before and after the
    # scrape.
    deferrals = r"relay=127\.0\.0\.1\b.*status=deferred"
    expiries = r"relay=none\b.*status=expired"
    before = len(daemon.log_lines(deferrals))
    expired_before = len(daemon.log_lines(expiries))
    samples = scrape(daemon)
    after = len(daemon.log_lines(deferrals))
    expired_after = len(daemon.log_lines(expiries))
    assert expired_before >= 1
    assert expired_before <= samples[("smarthostd_expired_total",
                                      (("relay", "none"),))] <= expired_after
    assert before >= 1
    assert before <= samples[("smarthostd_deferred_total",
                              (("relay", "127.0.0.1"),))] <= after
    assert samples.get(("smarthostd_delivered_total",
                        (("relay", "127.0.0.1"),)), 0) == 0


def test_metrics_gauges_see_the_queue(upstream_factory, daemon_factory):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port)
    qid = send_message(daemon, make_message("queued", "Waits.\n"))
    daemon.wait_log(delivery_line(qid, "b@example.net", "deferred"))
    wait_until(lambda: scrape(daemon)[
        ("smarthostd_queue_oldest_age_seconds", ())] >= 1, 10, "an age")
    samples = scrape(daemon)
    assert samples[("smarthostd_queue_messages", ())] == 1
    assert samples[("smarthostd_sessions", ())] == 0
