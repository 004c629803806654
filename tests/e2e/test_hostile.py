"""Hostile input against the real daemon, end to end.

Raw-socket clients feed control bytes (every C0 byte, DEL, escape
sequences, C1 controls), backslash escapes in quoted local parts, bare CR
and bare LF, NUL, over-long lines and pipelined garbage to every command
and to DATA and BDAT. Each test reads three things: the replies (the right
refusal, or acceptance), the daemon's log as bytes (no raw control byte,
nothing but well-formed printable UTF-8 and line feeds), and the bytes the
upstream received on the wire (exactly the intended message, CRLF line
ends, dot-stuffed, no NUL, nothing injected into Received:).
"""

import re
import unicodedata

import pytest

from harness import (RawSMTP, delivery_line, make_message, queue_id,
                     wait_until)

SENDER = "a@example.org"
RCPT = "b@example.net"

# Every C0 control but LF (which ends a command line; see the bare-LF
# test), DEL, a CSI and an OSC sequence, the C1 CSI raw and as UTF-8.
CONTROLS = [bytes([c]) for c in range(0x20) if c != 0x0a] + [
    b"\x7f", b"\x1b[31m", b"\x1b]0;owned\x07", b"\x9b31m", b"\xc2\x9b31m"]


def control_id(c):
    return c.hex()


def assert_log_clean(daemon):
    """Every byte the daemon logged is printable UTF-8 or a line feed:
    nothing a client sent can move the cursor, recolour a terminal or
    split a line."""
    raw = daemon.log_bytes()
    text = raw.decode("utf-8")          # fails on a raw 8-bit byte
    bad = sorted({hex(ord(ch)) for ch in text
                  if ch != "\n" and unicodedata.category(ch) == "Cc"})
    assert not bad, f"raw control characters in the log: {bad}"


def data_sections(wire):
    """The message data of each DATA command in one connection's bytes,
    as sent: from after "DATA\\r\\n" up to and including the CRLF before
    the final dot."""
    sections = []
    pos = 0
    while True:
        start = wire.find(b"\r\nDATA\r\n", pos)
        if start == -1:
            return sections
        start += len(b"\r\nDATA\r\n")
        end = wire.find(b"\r\n.\r\n", start - 2)
        assert end != -1, f"no final dot after DATA in {wire[start:][:200]!r}"
        sections.append(wire[start:end + 2])
        pos = end + 3


def upstream_data(upstream):
    """Every message's data as the upstream received it on the wire."""
    return [s for w in upstream.handler.wires for s in data_sections(w)]


def unstuffed(section):
    """A DATA section checked for correct transparency (RFC 5321 4.5.2)
    and returned without it: CRLF line ends only, no NUL, every line
    that starts with a dot stuffed."""
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", section) is None, \
        f"bare CR or LF on the wire: {section[:300]!r}"
    assert b"\x00" not in section, "NUL on the wire"
    lines = section[:-2].split(b"\r\n")
    for line in lines:
        assert line != b".", "an unstuffed lone dot on the wire"
    return b"\r\n".join(line[1:] if line.startswith(b".") else line
                        for line in lines) + b"\r\n"


def received_and_rest(content):
    """Our Received: header (its folded lines) and the rest."""
    assert content.startswith(b"Received: from "), content[:200]
    lines = content.split(b"\r\n")
    n = 1
    while lines[n].startswith((b"\t", b" ")):
        n += 1
    return b"\r\n".join(lines[:n]) + b"\r\n", b"\r\n".join(lines[n:])


def assert_arrived_exactly(upstream, sent_body, count=1):
    """count messages arrived; the last one's data on the wire is,
    unstuffed, our Received: header followed by sent_body (the message as
    the client meant it, CRLF line ends)."""
    sections = wait_until(
        lambda: s if len(s := upstream_data(upstream)) >= count else None,
        30, f"{count} message(s) on the upstream's wire")
    received, rest = received_and_rest(unstuffed(sections[-1]))
    assert rest == sent_body, (rest[:300], sent_body[:300])
    assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]",
                         received.replace(b"\r\n\t", b"")[:-2]), received
    return received


def greeted(daemon):
    smtp = RawSMTP(daemon.port)
    smtp.greet()
    return smtp


def code(smtp, line):
    """The reply code to one command line (bytes, or text as Latin-1)."""
    if isinstance(line, str):
        line = line.encode("latin-1")
    smtp.send(line + b"\r\n")
    return smtp.reply().code


@pytest.fixture
def lenient(daemon_factory, upstream):
    """A daemon that lets a client make many errors in one session."""
    return daemon_factory(upstream.port, limits={"max_errors": 1000})


def test_control_bytes_in_every_command(lenient, upstream):
    """A control byte anywhere in a verb, a HELO name, an address (plain,
    quoted, backslash-escaped), a domain or a parameter is refused: 500
    for a verb or any NUL, 501 (555 for a RCPT parameter) otherwise; NOOP
    and VRFY take any argument. None of it reaches the log raw, and the
    one good message is all the upstream gets."""
    daemon = lenient
    for c in CONTROLS:
        cs = c.decode("latin-1")
        nul = c == b"\x00"
        with greeted(daemon) as smtp:
            assert code(smtp, f"EHLO a{cs}b") == (500 if nul else 501), c
            assert code(smtp, f"HELO a{cs}b") == (500 if nul else 501), c
            if c != b"\t":      # a trailing tab is a blank, dropped
                assert code(smtp, f"NOOP{cs}") == 500, c
            assert code(smtp, f"NO{cs}OP") == 500, c
            assert code(smtp, f"{cs}NOOP") == 500, c
            assert code(smtp, f"NOOP {cs}") == (500 if nul else 250), c
            assert code(smtp, f"VRFY x{cs}@y.z") == (500 if nul else 252), c
            for line in (f"MAIL FROM:<a{cs}b@example.org>",
                         f'MAIL FROM:<"a{cs}b"@example.org>',
                         f'MAIL FROM:<"a\\{cs}b"@example.org>',
                         f"MAIL FROM:<a@exa{cs}mple.org>",
                         f"MAIL FROM:<a@example.org>{cs}",
                         f"MAIL FROM:<a@example.org> SIZE=1{cs}0",
                         f"MAIL FROM:<a@example.org> BODY=8BIT{cs}MIME"):
                if line.endswith(cs) and c == b"\t":
                    continue    # a trailing blank, dropped
                assert code(smtp, line) == (500 if nul else 501), (c, line)
            assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
            for line in (f"RCPT TO:<x{cs}y@example.net>",
                         f'RCPT TO:<"x{cs}y"@example.net>',
                         f'RCPT TO:<"x\\{cs}y"@example.net>',
                         f"RCPT TO:<x@exa{cs}mple.net>",
                         f"RCPT TO:<x@example.net>{cs}",
                         f"RCPT TO:<x@example.net> NOTIFY={cs}x"):
                if line.endswith(cs) and c == b"\t":
                    continue
                assert code(smtp, line) in ((500,) if nul else (501, 555)), \
                    (c, line)
            assert code(smtp, "DATA") == 503    # no recipient got in
            assert code(smtp, "QUIT") == 221
    with greeted(daemon) as smtp:
        smtp.begin_data()
        message = make_message("after the controls", "Fine.\n")
        smtp.send(message + b".\r\n")
        assert smtp.reply().code == 250
        smtp.command("QUIT")
    assert_arrived_exactly(upstream, message)
    upstream.assert_count_stays(1, settle=1)
    assert_log_clean(daemon)
    # The refused commands were traced (-d), escaped.
    log = daemon.log()
    for escaped in ("\\x1b[31m", "\\x0d", "\\x00", "\\x7f", "\\xc2\\x9b"):
        assert escaped in log, f"no {escaped} in the trace"


def test_quoted_escapes_and_8bit_in_addresses(lenient, upstream):
    """The issue's two addresses, then every escaped control byte, are
    refused at MAIL and RCPT; an 8-bit byte needs SMTPUTF8, and even with
    it only well-formed UTF-8 of printable characters passes (no C1
    control, no stray byte). A good UTF-8 address still gets through, and
    the Received: line of the message holds no control byte."""
    daemon = lenient
    with greeted(daemon) as smtp:
        assert code(smtp, b'MAIL FROM:<"\\\xff"@b.c>') == 501
        assert code(smtp, b'MAIL FROM:<"\\\xff"@b.c> SMTPUTF8') == 501
        assert code(smtp, b"MAIL FROM:<\xff@b.c> SMTPUTF8") == 501
        assert code(smtp, b"MAIL FROM:<a\xc2\x9b31m@b.c> SMTPUTF8") == 501
        assert code(smtp, b"MAIL FROM:<a\xed\xa0\x80@b.c> SMTPUTF8") == 501
        assert code(smtp, b"MAIL FROM:<a\xc0\xae@b.c> SMTPUTF8") == 501
        assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
        assert code(smtp, b'RCPT TO:<"\\\rX-Injected: yes\\\r\\\x1b[31m"'
                          b'@y.z>') == 501
        assert code(smtp, b'RCPT TO:<"\\\xff"@b.c>') == 501
        assert code(smtp, b'RCPT TO:<"\\\xc3\xa9"@b.c>') == 501  # no UTF8
        assert code(smtp, "RSET") == 250
        assert code(smtp, f"MAIL FROM:<{SENDER}> SMTPUTF8") == 250
        for line in (b'RCPT TO:<"\\\xff"@b.c>', b"RCPT TO:<\x80@b.c>",
                     b"RCPT TO:<a\xc2\x85b@b.c>",
                     b'RCPT TO:<"\\\rX-Injected: yes"@y.z>',
                     b"RCPT TO:<x@b\xff.c>"):
            assert code(smtp, line) == 501, line
        assert code(smtp, "RCPT TO:<j\u00f6rg@example.net>".encode()) == 250
        assert code(smtp, "DATA") == 354
        message = make_message("utf8", "Hallo.\n")
        smtp.send(message + b".\r\n")
        qid = queue_id(smtp.reply().text)
        smtp.command("QUIT")
    received = assert_arrived_exactly(upstream, message)
    assert "for <j\u00f6rg@example.net>".encode() in received, received
    relayed, = upstream.messages
    assert relayed.rcpt_tos == ["j\u00f6rg@example.net"]
    daemon.wait_log(delivery_line(qid, "j\u00f6rg@example.net", "sent"))
    assert_log_clean(daemon)


SMUGGLED = (b"MAIL FROM:<x@evil.example>\r\n"
            b"RCPT TO:<victim@example.net>\r\n"
            b"DATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


def replies_until_close(smtp):
    """Every reply until the server closes the connection."""
    got = []
    while True:
        try:
            got.append(smtp.reply())
        except ConnectionError:
            return got


def test_pipelined_garbage_after_the_final_dot(daemon, upstream):
    """Garbage pipelined behind the final dot (a NUL line, escape
    sequences, a RCPT and DATA without MAIL, text, a lone dot) waits for
    the 250 and is then answered line by line as commands, up to the
    refused DATA with text behind it, which ends the session: none of it
    joins the message or starts another."""
    message = make_message("before the garbage", "Body.\n")
    with greeted(daemon) as smtp:
        smtp.begin_data()
        smtp.send(message + b".\r\n" + b"\x00\x1b[2J\r\n\x1b]0;t\x07\r\n"
                  + SMUGGLED.split(b"\r\n", 1)[1] + b"QUIT\r\n")
        got = replies_until_close(smtp)
    # NUL line, escape verb, OSC verb, RCPT and DATA out of sequence,
    # then the end: text waits behind the refused DATA.
    assert [r.code for r in got] == [250, 500, 500, 503, 503, 421], got
    assert queue_id(got[0].text)
    assert_arrived_exactly(upstream, message)
    upstream.assert_count_stays(1, settle=1)
    assert_log_clean(daemon)


@pytest.mark.parametrize("refusal", ["no recipient", "bad recipient",
                                     "DATA argument"])
def test_data_pipelined_after_a_refused_data(daemon, upstream, refusal):
    """A client that pipelines its message behind DATA (RFC 2920 says
    to wait for the 354) and gets DATA refused: its message must not be
    read as commands, where a RCPT and DATA in the text would send it to
    another recipient. The daemon answers the DATA and closes."""
    first = {"no recipient": b"MAIL FROM:<a@example.org>\r\n",
             "bad recipient": b"MAIL FROM:<a@example.org>\r\n"
                              b"RCPT TO:<bad\x1b@example.net>\r\n",
             "DATA argument": b"MAIL FROM:<a@example.org>\r\n"
                              b"RCPT TO:<b@example.net>\r\n"}[refusal]
    data = b"DATA x\r\n" if refusal == "DATA argument" else b"DATA\r\n"
    with greeted(daemon) as smtp:
        smtp.send(first + data + SMUGGLED + b"QUIT\r\n")
        got = replies_until_close(smtp)
    codes = [r.code for r in got]
    assert 354 not in codes, got
    assert codes[-1] == 421, got
    upstream.assert_count_stays(0, settle=1.5)
    assert_log_clean(daemon)
