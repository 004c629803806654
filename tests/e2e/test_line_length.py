"""Long message lines on the way upstream: the relay's line_length_limit
(998 by default) breaks them with CRLF SP as Postfix's
smtp_line_length_limit does, header and body alike; 0 relays them as they
came. The upstream is aiosmtpd, which refuses a line of more than 1001
bytes with its CRLF (500, RFC 5321 4.5.3.1.6), as strict upstreams do."""

import re

from harness import (assert_relayed, delivery_line, make_message,
                     random_body, send_message)
from test_delivery import MIB, SMALL_QUARANTINE

SENDER = "a@example.org"
RCPT = "b@example.net"
LIMIT = 998


def fold(message, limit=LIMIT):
    """message (CRLF lines) as Postfix's smtp_text_out sends it with
    smtp_line_length_limit = limit: limit characters, then CRLF SP and
    limit - 1 more, and so on. A line of exactly limit is left alone."""
    out = []
    for line in message.split(b"\r\n"):
        pieces, line = [line[:limit]], line[limit:]
        while line:
            pieces.append(b" " + line[:limit - 1])
            line = line[limit - 1:]
        out.append(b"\r\n".join(pieces))
    return b"\r\n".join(out)


def long_message():
    """Lines at, around and far over the limit, in the header and the
    body, some starting with a dot (one that stays a dot after a break)."""
    body = b"\r\n".join([
        b"short",
        b"a" * 997,
        b"b" * 998,
        b"c" * 999,
        b"." + b"d" * 998,             # 999 with its dot: broken
        b"." + b"e" * 997,             # 998 with its dot: left alone
        b"f" * 998 + b".",             # the piece after the break is "."
        b"g" * 5000,
        b"<html>" + b"h" * 200_000 + b"</html>",
        b".",
        b"end",
    ]) + b"\r\n"
    message = make_message("long lines", body)
    head, rest = message.split(b"\r\n", 1)
    return head + b"\r\nX-Long: " + b"x" * 3000 + b"\r\n" + rest


def data_lines(wire):
    """The lines of the first DATA on a connection's wire, as sent (dot
    stuffing still on), without the final dot."""
    start = wire.index(b"\r\nDATA\r\n") + len(b"\r\nDATA\r\n")
    end = wire.index(b"\r\n.\r\n", start)
    return wire[start:end].split(b"\r\n")


def declared_size(wire):
    return int(re.search(rb"MAIL FROM:<[^>]*> SIZE=(\d+)", wire).group(1))


def test_long_lines_are_folded(daemon, upstream):
    """Every line arrives at most 998 characters long (a stuffed dot not
    counted), broken with CRLF SP exactly where Postfix breaks it, and
    MAIL's SIZE covers what was sent."""
    message = long_message()
    qid = send_message(daemon, message)
    msg, = upstream.wait_messages(1, timeout=20)
    assert_relayed(msg, fold(message))
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))

    wire, = upstream.handler.wires
    lines = data_lines(wire)
    for line in lines:
        unstuffed = line[1:] if line.startswith(b"..") else line
        assert len(unstuffed) <= LIMIT, line[:40]
    assert b" ." in lines, "the break before a lone '.' is missing"
    assert b"." + b"." + b"e" * 997 in lines
    size = declared_size(wire)
    assert len(msg.content) <= size, (len(msg.content), size)
    # the bound: 3 bytes per 994 of the message, at most (a break may
    # come up to 3 characters early to keep a UTF-8 character whole)
    assert size - len(msg.content) <= 3 * len(msg.content) // 994


def test_limit_zero_relays_lines_as_they_came(upstream_factory,
                                              daemon_factory):
    """line_length_limit = 0: the lines reach an upstream that takes them
    byte for byte; one that enforces RFC 5321's limit refuses the message
    with 500, and the sender gets it back."""
    message = long_message()
    lenient = upstream_factory(line_length_limit=1 << 20)
    daemon = daemon_factory(lenient.port,
                            relays={"upstream": {"line_length_limit": 0}})
    send_message(daemon, message)
    msg, = lenient.wait_messages(1, timeout=20)
    assert_relayed(msg, message)
    wire, = lenient.handler.wires
    assert declared_size(wire) == len(msg.content)

    strict = upstream_factory()
    daemon = daemon_factory(strict.port,
                            relays={"upstream": {"line_length_limit": 0}})
    qid = send_message(daemon, message)
    daemon.wait_log(delivery_line(qid, RCPT, "bounced")
                    + r" \(500 Line too long", timeout=20)


def test_size_near_the_limit_is_counted_exactly(upstream_factory,
                                                daemon_factory):
    """A message of short lines just under the upstream's SIZE limit is
    sent with its exact size: the bound on the breaks alone would pass the
    limit and have the message refused."""
    message = make_message("near the limit", random_body(1_000_000))
    upstream = upstream_factory(size_limit=len(message) + 1000)
    daemon = daemon_factory(upstream.port)
    qid = send_message(daemon, message)
    msg, = upstream.wait_messages(1, timeout=20)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    wire, = upstream.handler.wires
    assert declared_size(wire) == len(msg.content)
    # what the bound would have declared is over the limit
    assert len(msg.content) + 3 * ((len(msg.content) - 2) // 994) > \
        len(message) + 1000


def test_folding_that_passes_the_limit_is_refused(upstream_factory,
                                                  daemon_factory):
    """When the breaks themselves take a message over the upstream's SIZE
    limit, the message is returned (552 5.3.4) without being sent."""
    message = make_message("one long line", b"z" * 400_000)
    upstream = upstream_factory(size_limit=len(message) + 1000)
    daemon = daemon_factory(upstream.port)
    qid = send_message(daemon, message)
    daemon.wait_log(delivery_line(qid, RCPT, "bounced")
                    + r" \(message size \d+ exceeds size limit", timeout=20)
    bounce, = upstream.wait_messages(1, timeout=20)
    assert bounce.mail_from == "" and bounce.rcpt_tos == [SENDER]
    upstream.assert_count_stays(1, settle=1)


def test_one_line_of_20_mib_is_folded_while_it_streams(daemon_factory,
                                                       upstream):
    """A single-line body of 20 MiB (a script's one-line HTML, grown) is
    folded on the way without the daemon holding it: its peak RSS grows
    by far less than the message."""
    daemon = daemon_factory(upstream.port, env=SMALL_QUARANTINE)
    send_message(daemon, make_message("warm-up", "Small one first.\n"))
    upstream.wait_messages(1)
    baseline = daemon.vmhwm_kib()

    line = random_body(20 * MIB).replace(b"\r\n", b"")
    message = make_message("one line", b"<p>" + line + b"</p>\r\n")
    qid = send_message(daemon, message, timeout=120)
    relayed = upstream.wait_messages(2, timeout=120)[1]
    daemon.wait_log(rf"{qid}: removed", timeout=30)
    assert_relayed(relayed, fold(message))
    growth = daemon.vmhwm_kib() - baseline
    print(f"peak RSS growth for a 20 MiB line: {growth} KiB")
    assert growth < 8 * 1024, (
        f"peak RSS grew by {growth} KiB for a {len(message) >> 20} MiB "
        "line: the body is held in memory")


def test_breaks_never_cut_utf8_characters(daemon, upstream):
    """A long line of 1- to 4-byte UTF-8 characters: every line the
    upstream receives is valid UTF-8 of at most 998 bytes, some break came
    early to keep a character whole, and removing the breaks gives back
    the message."""
    unit = "aé€😀".encode()                 # 1 + 2 + 3 + 4 bytes
    body = b"\r\n".join([
        unit * 1000,
        b"x" * 997 + "😀".encode() + b"y" * 10,   # straddles 998..1001
        "€".encode() * 2000,
        b"end",
    ]) + b"\r\n"
    message = make_message("utf-8", body)
    qid = send_message(daemon, message)
    msg, = upstream.wait_messages(1, timeout=20)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))

    wire, = upstream.handler.wires
    lines = data_lines(wire)
    for line in lines:
        line.decode("utf-8")            # raises on a cut character
        unstuffed = line[1:] if line.startswith(b"..") else line
        assert len(unstuffed) <= LIMIT, line[:40]
    for line in msg.content.split(b"\r\n"):
        line.decode("utf-8")
    # a break before a character that would have crossed the limit
    assert b"x" * 997 in lines
    assert b" " + "😀".encode() + b"y" * 10 in lines
    assert any(LIMIT - 3 <= len(line) < LIMIT for line in lines)
    assert msg.content.replace(b"\r\n ", b"").endswith(message)
    assert declared_size(wire) >= len(msg.content)
