"""The relay never sends mail over a connection it cannot trust."""

from harness import delivery_line, make_message, send_message

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


def test_starttls_not_offered(upstream_factory, daemon_factory):
    upstream = upstream_factory(tls=None)
    daemon = daemon_factory(upstream.port)
    submit_and_expect_deferral(upstream, daemon, r".*STARTTLS")
