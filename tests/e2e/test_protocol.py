"""Inbound SMTP edge cases: size limit, overlong lines, smuggling."""

import os
import socket
import subprocess
import time

import pytest

from harness import (RawSMTP, assert_relayed, make_message, queue_id,
                     random_body, send_message)


def finish_data(smtp, message):
    """Sends message and the terminating dot; returns the reply."""
    smtp.send(message + b".\r\n")
    return smtp.reply()


def test_size_limit(upstream, daemon_factory):
    daemon = daemon_factory(upstream.port,
                            limits={"max_message_size": "100K"})
    small = make_message("fits", random_body(50_000))
    with RawSMTP(daemon.port) as smtp:
        ehlo = smtp.greet()
        sizes = [int(line.split()[1]) for line in ehlo.lines
                 if line.upper().startswith("SIZE ")]
        assert sizes and sizes[0] in (100_000, 102_400), ehlo.lines

        reply = smtp.command("MAIL FROM:<a@example.org> SIZE=200000")
        assert reply.code == 552, reply

        # Not declared, but too big: refused at the end of the data.
        smtp.begin_data()
        reply = finish_data(smtp, make_message("too big",
                                               random_body(150_000)))
        assert reply.code == 552, reply

        # The session goes on and a message within the limit passes.
        smtp.begin_data()
        reply = finish_data(smtp, small)
        assert reply.code == 250, reply
        queue_id(reply.text)
        assert smtp.command("QUIT").code == 221

    msg, = upstream.wait_messages(1)
    assert_relayed(msg, small)
    upstream.assert_count_stays(1, settle=1)


def test_overlong_command_line(daemon, upstream):
    message = make_message("after a long line", "Still in business.\n")
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        reply = smtp.command("NOOP " + "x" * 4990 + " QUIT")
        assert reply.code == 500, reply
        assert reply.lines[0].startswith("5.5.2"), reply
        # No part of the long line may be taken for a command: the next
        # reply is the one to this NOOP.
        assert smtp.command("NOOP").code == 250
        smtp.begin_data()
        reply = finish_data(smtp, message)
        assert reply.code == 250, reply
        assert smtp.command("QUIT").code == 221
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)


SMUGGLED = (b"MAIL FROM:<x@y.example>\r\n"
            b"RCPT TO:<z@w.example>\r\n"
            b"DATA\r\n"
            b"smuggled\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n",
                                      b"\r.\r\n"],
                         ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF"])
def test_no_smuggling(daemon, upstream, fake_end):
    # Everything up to the only real CRLF.CRLF is one message, whatever
    # end-of-data lookalike it contains.
    message = make_message("smuggling", "hello")[:-2]
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        smtp.begin_data()
        reply = finish_data(smtp, message + fake_end + SMUGGLED)
        assert reply.code == 250, reply
        queue_id(reply.text)
        smtp.send(b"QUIT\r\n")
        extra = []
        while (reply := smtp.reply()).code != 221:
            extra.append(reply)
        assert not extra, f"smuggled commands were answered: {extra}"

    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "a@example.org"
    assert b"MAIL FROM:<x@y.example>" in msg.content
    assert b"smuggled" in msg.content
    assert b"\n" not in msg.content.replace(b"\r\n", b""), \
        "bare LF relayed upstream"
    upstream.assert_count_stays(1, settle=1.5)


def test_escaped_control_bytes_refused_and_logs_escaped(daemon, upstream):
    """A backslash-escaped CR or ESC in a quoted local part is refused at
    RCPT like a bare one, an escaped 8-bit byte without SMTPUTF8 at MAIL;
    a refused line in the -d trace shows no raw control byte; the good
    message that follows arrives with nothing injected."""
    evil = b'RCPT TO:<"\\\rX-Injected: yes\\\r\\\x1b[31m"@y.z>\r\n'
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        smtp.send(b'MAIL FROM:<"\\\xff"@b.c>\r\n')
        assert smtp.reply().code == 501
        assert smtp.command("MAIL FROM:<a@example.org>").code == 250
        smtp.send(evil)
        assert smtp.reply().code == 501
        assert smtp.command("RCPT TO:<b@example.net>").code == 250
        assert smtp.command("DATA").code == 354
        message = make_message("after a refused address", "Fine.\n")
        reply = finish_data(smtp, message)
        assert reply.code == 250, reply
        smtp.command("QUIT")
    relayed, = upstream.wait_messages(1)
    assert_relayed(relayed, message)
    assert b"X-Injected" not in relayed.content
    log = daemon.log()
    assert "\x1b" not in log and "\r" not in log, "raw control bytes logged"
    assert "\\x0dX-Injected" in log, "the refused command is not traced"


def test_slow_client_hits_the_session_deadline(upstream, daemon_factory):
    """A client that trickles its data, a byte well within the idle
    timeout each time, is cut off by session_timeout with 421, and the
    daemon keeps serving others meanwhile."""
    daemon = daemon_factory(upstream.port,
                            limits={"idle_timeout": 30,
                                    "session_timeout": 3})
    with RawSMTP(daemon.port, timeout=10) as slow:
        slow.greet()
        slow.begin_data()
        start = time.monotonic()
        reply = None
        for _ in range(40):
            try:
                slow.send(b"x")
            except OSError:
                break
            slow.sock.settimeout(0.25)
            try:
                reply = slow.reply()
                break
            except socket.timeout:
                continue
        took = time.monotonic() - start
        assert reply is not None, f"still in DATA after {took:.1f}s"
        assert reply.code == 421 and "time limit" in reply.text, reply
    # Someone else, meanwhile and after, is served.
    message = make_message("not starved", "Hello.\n")
    qid = send_message(daemon, message)
    relayed, = upstream.wait_messages(1)
    assert_relayed(relayed, message)
    assert qid


def greeting_as(uid, port):
    """The first line the daemon sends a TCP client running as uid."""
    script = ("import socket, sys\n"
              f"s = socket.create_connection(('127.0.0.1', {port}), 10)\n"
              "sys.stdout.write(s.makefile('rb').readline().decode())\n")
    result = subprocess.run(["/usr/bin/python3", "-c", script], user=uid,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_client_cannot_take_every_session(upstream, daemon_factory):
    """max_sessions_per_client: one local user holds its two sessions (on
    the Unix socket); a third, on the socket or over loopback TCP, where
    the daemon finds the same uid, gets 421 4.7.0; another local user
    still gets in."""
    if os.geteuid() != 0:
        pytest.fail("needs root to connect as another user")
    daemon = daemon_factory(upstream.port,
                            limits={"max_sessions": 4,
                                    "max_sessions_per_client": 2})
    held = [RawSMTP(path=daemon.unix_path) for _ in range(2)]
    try:
        for smtp in held:
            assert smtp.reply().code == 220
        with RawSMTP(path=daemon.unix_path) as third:
            reply = third.reply()
            assert reply.code == 421 and reply.text.startswith("4.7.0"), \
                reply
        with RawSMTP(daemon.port) as tcp:
            reply = tcp.reply()
            assert reply.code == 421 and reply.text.startswith("4.7.0"), \
                reply
        assert greeting_as(65534, daemon.port).startswith("220 ")
    finally:
        for smtp in held:
            smtp.close()
