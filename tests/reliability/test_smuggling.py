"""SMTP smuggling (the 2023 research), both directions.

Inbound: each end-of-data lookalike followed by a smuggled transaction,
in DATA and in a BDAT chunk: the daemon either refuses the message or
takes everything up to the real end as one message; the smuggled envelope
never reaches the upstream and no command inside the data is answered.

Outbound: random messages whose lines start with dots, are only a dot,
or hold bare CR or LF, sent with DATA (dot-stuffed by the client) and
BDAT (as they are): the upstream receives exactly one copy of each, with
CRLF line ends, dots unstuffed to what the client meant.

Short (make check): 11 patterns x 2, 40 random messages. Long: 480.
"""

import os
import random
import re

from conftest import scale
from harness import RawSMTP, make_message, wait_until

SMUGGLED = (b"MAIL FROM:<x@smuggler.example>\r\n"
            b"RCPT TO:<victim@example.net>\r\n"
            b"DATA\r\n"
            b"smuggled\r\n")
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
             b"\r.\r", b"\n.\r", b"\r.\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n",
             b"\r\n.\x00\r\n"]
TOKEN_RE = re.compile(rb"Subject: smug (\S+)\r\n")


def stuff(data):
    """Client-side dot-stuffing of CRLF text."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line
                        for line in lines)


def send_data(smtp, body):
    smtp.begin_data(sender="a@example.org", recipients=("b@example.net",))
    smtp.send(body + b"\r\n.\r\n")
    return smtp.reply()


def send_bdat(smtp, body, pieces=3):
    assert smtp.command("MAIL FROM:<a@example.org>").code == 250
    assert smtp.command("RCPT TO:<b@example.net>").code == 250
    cuts = sorted(random.sample(range(1, len(body)), pieces - 1))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    for i, chunk in enumerate(chunks):
        last = " LAST" if i == len(chunks) - 1 else ""
        smtp.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
        reply = smtp.reply()
        if reply.code != 250 or last:
            return reply
    return reply


def test_inbound_smuggling(daemon, upstream, figures):
    outcomes = {"accepted": 0, "refused": 0}
    for verb in ("DATA", "BDAT"):
        for fake in FAKE_ENDS:
            token = os.urandom(4).hex()
            message = make_message(f"smug {token}", "hello")[:-2]
            body = message + fake + SMUGGLED
            with RawSMTP(daemon.port) as smtp:
                smtp.greet()
                if verb == "DATA":
                    reply = send_data(smtp, body)
                else:
                    reply = send_bdat(smtp, body + b"\r\n")
                assert reply.code == 250 or 500 <= reply.code < 600, reply
                if b"\x00" in fake:    # smarthostd(8): NUL is refused
                    assert reply.code == 554, (verb, fake, reply)
                outcomes["accepted" if reply.code == 250 else "refused"] += 1
                smtp.send(b"QUIT\r\n")
                extra = []
                while (r := smtp.reply()).code != 221:
                    extra.append(r)
                assert not extra, f"{verb} {fake!r}: answered {extra}"
    wait_until(lambda: len(upstream.messages) >= outcomes["accepted"], 30,
               "the accepted messages upstream")
    upstream.assert_count_stays(outcomes["accepted"], settle=1)
    for m in upstream.messages:
        assert m.mail_from == "a@example.org", m.mail_from
        assert m.rcpt_tos == ["b@example.net"], m.rcpt_tos
        assert b"smuggled" in m.content
        assert b"\n" not in m.content.replace(b"\r\n", b""), "bare LF"
        assert b"\r" not in m.content.replace(b"\r\n", b""), "bare CR"
    figures(patterns=len(FAKE_ENDS), verbs=2, **outcomes,
            smuggled_delivered=0)


def random_line(rng):
    kind = rng.random()
    if kind < 0.15:
        return b"."
    if kind < 0.3:
        return b"." * rng.randint(1, 3) + os.urandom(4).hex().encode()
    if kind < 0.4:
        return b"a\rb" + (b"\r" if rng.random() < 0.5 else b"")
    if kind < 0.45:
        return b"x\ny"
    return os.urandom(rng.randint(0, 30)).hex().encode()


def normalized(data):
    """What the upstream must get for data: every line ending (CRLF, bare
    CR, bare LF) as CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def test_outbound_stuffing(daemon, upstream, figures):
    count = scale(40, 480)
    rng = random.Random(os.environ.get("RELIABILITY_SEED") or None)
    sent = {}
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        for i in range(count):
            token = f"{i}-{os.urandom(3).hex()}"
            lines = [random_line(rng) for _ in range(rng.randint(1, 12))]
            body = make_message(f"smug {token}", "x")[:-3] + \
                b"\r\n".join(lines) + b"\r\n"
            if i % 2:
                reply = send_bdat(smtp, body)
            else:
                reply = send_data(smtp, stuff(body[:-2]))
            assert reply.code == 250, reply
            sent[token] = normalized(body)
        smtp.command("QUIT")
    wait_until(lambda: len(upstream.messages) >= count, 60,
               "every message upstream")
    upstream.assert_count_stays(count, settle=1)
    wrong = []
    for m in upstream.messages:
        token = TOKEN_RE.search(m.content).group(1).decode()
        if not m.content.endswith(sent[token]):
            wrong.append(token)
    figures(messages=count, wrong=len(wrong), duplicates=0)
    assert not wrong, wrong[:5]
