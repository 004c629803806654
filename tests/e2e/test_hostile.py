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
                     smtp_client, submit, wait_until)

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
        if end == -1:
            return sections     # still on its way
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


# (what the client sends after the header section, what it means). With
# DATA the client dot-stuffs and ends with CRLF.CRLF; a bare LF ends a
# line (and a dot after it is unstuffed), a bare CR does not, and each
# becomes CRLF on the way out.
DATA_CASES = [
    (b"..\r\n", b".\r\n"),
    (b"...x\r\n.y\r\n", b"..x\r\ny\r\n"),
    (b"a\nb\r\n", b"a\r\nb\r\n"),
    (b"a\rb\r\n", b"a\r\nb\r\n"),
    (b"a\r.b\r\n", b"a\r\n.b\r\n"),
    (b"a\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
    (b"a\r\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
    (b"a\n.\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
    (b"a\r.\r\r\n", b"a\r\n.\r\n\r\n"),
    # A dot with more on its line is unstuffed (RFC 5321 4.5.2), even
    # when the more is a bare CR.
    (b"a\r\n.\r\r\n", b"a\r\n\r\n\r\n"),
    (b"\r\n\r\n\n\r\r\n", b"\r\n\r\n\r\n\r\n\r\n"),
    (b"..\x1b[31m\x7f\r\n", b".\x1b[31m\x7f\r\n"),
]
# With BDAT the octets are the message, as they are: nothing is
# unstuffed, and a CRLF.CRLF inside a chunk is text the upstream must
# get stuffed. Chunks are given as a list.
BDAT_CASES = [
    ([b".\r\n"], b".\r\n"),
    ([b"x\r\n.\r\nMAIL FROM:<evil@x.example>\r\n"],
     b"x\r\n.\r\nMAIL FROM:<evil@x.example>\r\n"),
    ([b"..x\r\n"], b"..x\r\n"),
    ([b"a\rb\nc\r\n"], b"a\r\nb\r\nc\r\n"),
    ([b"abc"], b"abc\r\n"),
    ([b"abc\r"], b"abc\r\n"),
    ([b"a\r", b"\nb\r\n"], b"a\r\nb\r\n"),
    ([b"a\r\n", b".", b"\r\n", b".b\r\n"], b"a\r\n.\r\n.b\r\n"),
    ([b"a\n.\n", b"\r.\r"], b"a\r\n.\r\n\r\n.\r\n"),
]
SUBJECT_RE = re.compile(rb"Subject: (case \S+)\r\n")


def bdat_send(smtp, chunks):
    for i, chunk in enumerate(chunks):
        last = " LAST" if i == len(chunks) - 1 else ""
        smtp.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
        reply = smtp.reply()
        if last or reply.code != 250:
            return reply
    return reply


def test_line_ends_and_dots_in_data_and_bdat(daemon, upstream):
    """Bare CR, bare LF, lone dots and end-of-data lookalikes in DATA and
    in BDAT chunks: the upstream's wire carries exactly the message the
    client meant, CRLF line ends, every leading dot stuffed."""
    expected = {}
    with greeted(daemon) as smtp:
        for i, (sent, meant) in enumerate(DATA_CASES):
            head = make_message(f"case d{i}", "x")[:-3]
            smtp.begin_data()
            smtp.send(head + sent + b".\r\n")
            assert smtp.reply().code == 250, (i, sent)
            expected[f"case d{i}".encode()] = head + meant
        for i, (chunks, meant) in enumerate(BDAT_CASES):
            head = make_message(f"case b{i}", "x")[:-3]
            assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
            assert code(smtp, f"RCPT TO:<{RCPT}>") == 250
            reply = bdat_send(smtp, [head + chunks[0]] + chunks[1:])
            assert reply.code == 250 and queue_id(reply.text), (i, reply)
            expected[f"case b{i}".encode()] = head + meant
        smtp.command("QUIT")
    # smtplib, as a program would use it: it turns every CR, LF and CRLF
    # into CRLF and stuffs the dots itself.
    head = make_message("case s0", "x")[:-3]
    with smtp_client(daemon, via="unix") as client:
        submit(client, SENDER, [RCPT], head + b".\n..x\r\na\rb\n.\r\n")
    expected[b"case s0"] = head + b".\r\n..x\r\na\r\nb\r\n.\r\n"
    total = len(expected)
    wait_until(lambda: len(upstream_data(upstream)) >= total, 30,
               "every message on the upstream's wire")
    upstream.assert_count_stays(total, settle=1)
    wrong = []
    for section in upstream_data(upstream):
        _, rest = received_and_rest(unstuffed(section))
        subject = SUBJECT_RE.search(rest).group(1)
        if rest != expected.pop(subject):
            wrong.append((subject, rest[-60:]))
    assert not wrong and not expected, (wrong, list(expected))
    # What aiosmtpd made of it agrees with our reading of the wire.
    for m in upstream.messages:
        assert b"\n" not in m.content.replace(b"\r\n", b"")
        assert b"\r" not in m.content.replace(b"\r\n", b"")
    assert_log_clean(daemon)


def test_nul_bytes_refused_whole(daemon, upstream):
    """The documented NUL policy (smarthostd(8)): a message with a NUL
    anywhere, in DATA (a line of NUL and a dot among them, which must
    not end the data) or in a BDAT chunk, is refused whole with 554
    5.6.0, nothing of it is queued, the session goes on, and the bytes
    after a NUL-dot line are never taken for commands."""
    head = make_message("nul", "x")[:-3]
    with greeted(daemon) as smtp:
        for body in (b"a\x00b\r\n", b"a\r\n\x00.\r\n" + SMUGGLED[:-3],
                     b"\x00\r\n", b"x\r\n.\x00\r\n"):
            smtp.begin_data()
            smtp.send(head + body + b".\r\n")
            reply = smtp.reply()
            assert reply.code == 554 and reply.text.startswith("5.6.0"), \
                (body, reply)
        # NUL in the first of two chunks: refused at that chunk; the
        # second is read (not taken for commands) and refused too.
        assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
        assert code(smtp, f"RCPT TO:<{RCPT}>") == 250
        smtp.send(b"BDAT 5\r\na\x00\r\nb")
        reply = smtp.reply()
        assert reply.code == 554 and reply.text.startswith("5.6.0"), reply
        smtp.send(b"BDAT 21 LAST\r\nRCPT TO:<v@x.example>")
        assert smtp.reply().code == 503
        # The session still serves a clean message.
        smtp.begin_data()
        message = make_message("clean after NUL", "Fine.\n")
        smtp.send(message + b".\r\n")
        assert smtp.reply().code == 250
        smtp.command("QUIT")
    assert_arrived_exactly(upstream, message)
    upstream.assert_count_stays(1, settle=1)
    assert len(daemon.log_lines(r"reject: message contains a NUL byte")) == 5
    assert_log_clean(daemon)


def test_overlong_lines_and_messages(daemon_factory, upstream_factory):
    """A command line of max_line bytes (CRLF included) passes, one byte
    more is 500 5.5.2, and nothing of an over-long line (a bare CR and a
    QUIT inside it, sent in pieces) is taken for a command. Message lines
    have no such limit: lines around the 64 KiB scanning chunk and one of
    200 KB, each starting with a stuffed dot, reach the upstream byte for
    byte (the relay's line_length_limit = 0 keeps them whole; folding is
    test_line_length's). A message over max_message_size is refused with
    552, in DATA and in BDAT, and the session goes on."""
    upstream = upstream_factory(line_length_limit=1 << 20)
    daemon = daemon_factory(upstream.port,
                            limits={"max_message_size": "1M"},
                            relays={"upstream": {"line_length_limit": 0}})
    with greeted(daemon) as smtp:
        assert code(smtp, "NOOP " + "x" * (2048 - 7)) == 250
        reply = smtp.command("NOOP " + "x" * (2048 - 6))
        assert reply.code == 500 and reply.text.startswith("5.5.2"), reply
        for piece in (b"NOOP ", b"y" * 3000, b"\rQUIT\r", b"z" * 3000):
            smtp.send(piece)
        smtp.send(b"\r\n")
        reply = smtp.reply()
        assert reply.code == 500 and reply.text.startswith("5.5.2"), reply
        assert code(smtp, "NOOP") == 250

        lines = [b"." + bytes([0x61 + i % 26]) * n for i, n in enumerate(
            (65533, 65534, 65535, 65536, 65537, 200_000))]
        body = b"".join(line + b"\r\n" for line in lines)
        message = make_message("long lines", "x")[:-3] + body
        smtp.begin_data()
        smtp.send(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert smtp.reply().code == 250

        too_big = make_message("too big", "x")[:-3] + \
            (b"y" * 998 + b"\r\n") * 1100
        smtp.begin_data()
        smtp.send(too_big + b".\r\n")
        reply = smtp.reply()
        assert reply.code == 552 and reply.text.startswith("5.3.4"), reply
        assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
        assert code(smtp, f"RCPT TO:<{RCPT}>") == 250
        reply = bdat_send(smtp, [too_big[:600_000], too_big[600_000:]])
        assert reply.code == 552 and reply.text.startswith("5.3.4"), reply
        assert code(smtp, "NOOP") == 250
        smtp.command("QUIT")
    assert_arrived_exactly(upstream, message)
    upstream.assert_count_stays(1, settle=1)
    assert_log_clean(daemon)


def test_bare_lf_in_commands(daemon, upstream):
    """A bare LF ends a command line (lenient, as documented); so a bare
    LF inside an address cuts it in two lines, each refused, and a bare
    CR inside one is a control byte, refused. A transaction of bare-LF
    commands still delivers exactly its message."""
    with greeted(daemon) as smtp:
        smtp.send(b'RCPT TO:<"x\ny"@example.net>\r\n')
        assert [smtp.reply().code, smtp.reply().code] == [503, 500]
        smtp.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@\nexample.net>\n")
        assert [smtp.reply().code, smtp.reply().code,
                smtp.reply().code] == [250, 501, 500]
        smtp.send(b"RCPT TO:<b@example.net>\rDATA\n")
        assert smtp.reply().code == 501
        smtp.send(b"RCPT TO:<b@example.net>\nDATA\n")
        assert [smtp.reply().code, smtp.reply().code] == [250, 354]
        head = make_message("bare LF commands", "x")[:-3]
        smtp.send(head + b"one\n.\ntwo\r\n.\r\n")
        assert smtp.reply().code == 250
        smtp.command("QUIT")
    assert_arrived_exactly(upstream, head + b"one\r\n.\r\ntwo\r\n")
    upstream.assert_count_stays(1, settle=1)
    assert_log_clean(daemon)


# Our Received: header as smtp_server.c writes it for one recipient: three
# lines, the id the client was given in the second.
RECEIVED_RE = re.compile(
    rb"Received: from client\.test \(\S+ \[[^]\r\n]+\]\)\r\n"
    rb"\tby \S+ \(smarthostd(?:, from userid \d+)?\) with ESMTP"
    rb" id ([0-9A-F]{16})\r\n"
    rb"\tfor <b@example\.net>; [^\r\n]+\r\n")


def test_leading_blank_cannot_continue_received(daemon, upstream):
    """A message whose first line starts with SP or HTAB would be read as
    a folded continuation of our Received: header, in DATA (also a first
    line ". x", a space after unstuffing) and in BDAT. The daemon puts an
    empty line before it, as Postfix's smtpd does: the upstream sees our
    Received: header as we wrote it, with the client's queue id and
    nothing of the client's in it, and the client's text after an empty
    line, as body. The BDAT reply counts the client's octets only."""
    rest = b"Subject: leading blank\r\n\r\nbody\r\n"
    meant = {}      # queue id -> the message as the client meant it
    with greeted(daemon) as smtp:
        for first, stored in ((b" X-Injected: yes\r\n", None),
                              (b"\tby evil.example id 0\r\n", None),
                              (b". X-Dot: yes\r\n", b" X-Dot: yes\r\n")):
            smtp.begin_data()
            smtp.send(first + rest + b".\r\n")
            reply = smtp.reply()
            assert reply.code == 250, (first, reply)
            meant[queue_id(reply.text)] = (stored or first) + rest
        assert code(smtp, f"MAIL FROM:<{SENDER}>") == 250
        assert code(smtp, f"RCPT TO:<{RCPT}>") == 250
        chunk = b"\tX-Chunk: yes\r\n"
        smtp.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        reply = smtp.reply()
        assert (reply.code, reply.text) == (
            250, f"2.0.0 Ok: {len(chunk)} octets received"), reply
        smtp.send(f"BDAT {len(rest)} LAST\r\n".encode() + rest)
        reply = smtp.reply()
        assert reply.code == 250, reply
        meant[queue_id(reply.text)] = chunk + rest
        smtp.command("QUIT")
    upstream.wait_messages(len(meant))
    for m in upstream.assert_count_stays(len(meant), settle=1):
        received = RECEIVED_RE.match(m.content)
        assert received, m.content[:300]
        qid = received.group(1).decode()
        assert m.content[received.end():] == b"\r\n" + meant.pop(qid), \
            m.content[:300]
        parsed = m.parsed()
        assert parsed.get_all("Received") == [
            received.group(0)[len(b"Received: "):-2].decode()], \
            parsed.get_all("Received")
        assert parsed.keys() == ["Received"], parsed.keys()
    assert not meant, f"not relayed: {list(meant)}"
    assert_log_clean(daemon)
