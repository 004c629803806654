"""Inbound SMTP edge cases: size limit, overlong lines, smuggling."""

import pytest

from harness import (RawSMTP, assert_relayed, make_message, queue_id,
                     random_body)


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
