"""Well-formed mail from real clients reaches the upstream intact."""

import hashlib
import os
import subprocess

import pytest

from harness import (CLIENT_HOSTNAME, RawSMTP, assert_relayed,
                     delivery_line, make_message, queue_id, random_body,
                     send_message, wait_until)

MIB = 1024 * 1024


def test_swaks_over_tcp(daemon, upstream):
    token = f"swaks-{os.urandom(8).hex()}"
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(daemon.port),
         "--helo", CLIENT_HOSTNAME, "--from", "a@example.org",
         "--to", "b@example.net", "--header", "Subject: swaks",
         "--body", token, "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    qid = queue_id(result.stdout)

    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "a@example.org"
    assert msg.rcpt_tos == ["b@example.net"]
    assert msg.tls, "relayed without STARTTLS"
    assert token.encode() in msg.content
    assert msg.content.startswith(b"Received: ")
    daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))
    daemon.wait_log(rf"{qid}: removed")


def test_msmtp_over_tcp(daemon, upstream, tmp_path):
    """msmtp, the program smarthostd replaces on many servers, as a client:
    it sends a message with bare-LF line ends from a file."""
    token = f"msmtp-{os.urandom(8).hex()}"
    text = (f"From: a@example.org\nTo: b@example.net\nSubject: msmtp\n\n"
            f"{token}\n.leading dot\n")
    result = subprocess.run(
        ["msmtp", "--file=/dev/null", "--host=127.0.0.1",
         f"--port={daemon.port}", "--tls=off", "--auth=off",
         f"--domain={CLIENT_HOSTNAME}", "--from=a@example.org",
         "b@example.net"],
        input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "a@example.org"
    assert msg.rcpt_tos == ["b@example.net"]
    assert token.encode() + b"\r\n.leading dot\r\n" in msg.content
    assert b"\n" not in msg.content.replace(b"\r\n", b"")


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_smtplib_submission(daemon, upstream, via):
    # Lines that start with dots must survive unstuffing on the way in and
    # stuffing on the way out.
    message = make_message(f"submitted over {via}",
                           "Hello.\n.one leading dot\n..two\n.\nend\n")
    qid = send_message(daemon, message, via=via)

    msg, = upstream.wait_messages(1)
    assert (msg.mail_from, msg.rcpt_tos) == ("a@example.org",
                                             ["b@example.net"])
    assert msg.tls, "relayed without STARTTLS"
    assert_relayed(msg, message)
    daemon.wait_log(rf"{qid}: client=")
    daemon.wait_log(rf"{qid}: from=<a@example\.org>, size=\d+, nrcpt=1 "
                    r"\(queued\)")
    daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))
    daemon.wait_log(rf"{qid}: removed")


def test_pipelined_client(daemon, upstream):
    message = make_message("pipelined", "Commands sent in one write.\n")
    recipients = ["b@example.net", "c@example.net"]
    with RawSMTP(daemon.port) as smtp:
        ehlo = smtp.greet()
        assert "PIPELINING" in (line.upper() for line in ehlo.lines)
        smtp.send(b"MAIL FROM:<a@example.org>\r\n"
                  + b"".join(f"RCPT TO:<{r}>\r\n".encode()
                             for r in recipients)
                  + b"DATA\r\n")
        codes = [smtp.reply().code for _ in range(len(recipients) + 2)]
        assert codes == [250, 250, 250, 354]
        smtp.send(message + b".\r\n")
        done = smtp.reply()
        assert done.code == 250, done
        qid = queue_id(done.text)
        assert smtp.command("QUIT").code == 221

    def all_recipients():
        msgs = upstream.messages
        got = sorted(r for m in msgs for r in m.rcpt_tos)
        return msgs if got == recipients else None

    for msg in wait_until(all_recipients, 15, "both recipients upstream"):
        assert_relayed(msg, message)
    for rcpt in recipients:
        daemon.wait_log(delivery_line(qid, rcpt, "sent"))


# AddressSanitizer keeps freed memory in a quarantine (256 MiB by default)
# that the RSS would count; a 1 MiB one makes the peak RSS what the daemon
# holds, under ASan as without it (the variable is ignored there).
SMALL_QUARANTINE = {"ASAN_OPTIONS": "quarantine_size_mb=1:"
                    "thread_local_quarantine_size_kb=64"}


def test_large_message_is_streamed(daemon_factory, upstream):
    daemon = daemon_factory(upstream.port, env=SMALL_QUARANTINE)
    # Warm up so that one-time allocations (TLS, first session) are in
    # the baseline.
    send_message(daemon, make_message("warm-up", "Small one first.\n"))
    upstream.wait_messages(1)
    baseline = daemon.vmhwm_kib()

    message = make_message("20 MB", random_body(20 * MIB))
    qid = send_message(daemon, message, timeout=120)
    relayed = upstream.wait_messages(2, timeout=120)[1]
    daemon.wait_log(rf"{qid}: removed", timeout=30)

    tail = relayed.content[-len(message):]
    assert (hashlib.sha256(tail).hexdigest()
            == hashlib.sha256(message).hexdigest()), "body changed in transit"
    assert_relayed(relayed, message)
    growth = daemon.vmhwm_kib() - baseline
    print(f"peak RSS growth for a 20 MiB message: {growth} KiB")
    assert growth < 8 * 1024, (
        f"peak RSS grew by {growth} KiB for a {len(message) >> 20} MiB "
        "message: the body is held in memory")


def test_kept_bodies_and_spool_files_relay_the_same_bytes(daemon_factory,
                                                          upstream):
    # A message of the spool log goes upstream from the buffer it was
    # received into (kept after its commit); one over spool_log_max from
    # its file. Both arrive exactly as submitted.
    daemon = daemon_factory(upstream.port)
    small = make_message("kept in memory",
                         b".leading dot\r\n" + random_body(3000))
    large = make_message("a file of its own", random_body(200 * 1024))
    for n, message in enumerate((small, large), 1):
        qid = send_message(daemon, message)
        daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))
        assert_relayed(upstream.wait_messages(n, timeout=30)[-1], message)
    sources = daemon.log_lines(r">>> \[body: \d+ bytes from (memory|file)")
    assert [("from memory" in line) for line in sources] == [True, False], \
        sources
