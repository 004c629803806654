"""Local addresses: aliases for local recipients, the catch-all, refusal of
unknown local names at RCPT, and sender rewriting in the envelope and the
headers, checked at a real upstream."""

import os
import signal
import subprocess

import pytest

from harness import (HOSTNAME, RawSMTP, check_config, make_message,
                     send_message, smtp_client)

ALIASES = """\
# aliases for the tests
postmaster: root
root: admin, ops@example.com
admin: boss@example.com,
\tops@EXAMPLE.com
loop1: loop2
loop2: loop1
ghost: nobody-here
"""


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def aliases_file(tmp_path):
    return write(tmp_path / "aliases", ALIASES)


def rcpt_reply(daemon, rcpt, sender="a@example.org"):
    with RawSMTP(port=daemon.port) as c:
        c.greet()
        assert c.command(f"MAIL FROM:<{sender}>").code == 250
        reply = c.command(f"RCPT TO:<{rcpt}>")
        c.command("QUIT")
        return reply


def test_root_and_root_at_localhost_reach_the_aliases(daemon_factory,
                                                      upstream,
                                                      aliases_file):
    daemon = daemon_factory(upstream.port, aliases=aliases_file)
    for rcpt in ("root", "root@localhost", f"ROOT@{HOSTNAME.upper()}"):
        send_message(daemon, make_message(f"to {rcpt}", "cron output\n",
                                          recipient=rcpt),
                     recipients=(rcpt,))
    msgs = upstream.wait_messages(3)
    for msg in msgs:
        # root -> admin (-> boss, ops) and ops again: one copy each
        assert msg.rcpt_tos == ["boss@example.com", "ops@EXAMPLE.com"]
    daemon.wait_log(r"<root> is an alias for 2 addresses")


def test_recursive_alias_and_duplicates(daemon_factory, upstream,
                                        aliases_file):
    daemon = daemon_factory(upstream.port, aliases=aliases_file)
    send_message(daemon, make_message("pm", "x\n"),
                 recipients=("postmaster", "ops@example.com",
                             "x@example.net"))
    msg, = upstream.wait_messages(1)
    assert msg.rcpt_tos == ["boss@example.com", "ops@EXAMPLE.com",
                            "x@example.net"]


def test_loop_and_unknown_local_names_refused_at_rcpt(daemon_factory,
                                                      upstream,
                                                      aliases_file):
    daemon = daemon_factory(upstream.port, aliases=aliases_file)
    reply = rcpt_reply(daemon, "loop1")
    assert reply.code == 550
    assert reply.text == "5.4.6 <loop1>: alias loop: loop1 -> loop2 -> loop1"
    reply = rcpt_reply(daemon, "nobody@localhost")
    assert reply.code == 550
    assert reply.text == ("5.1.1 <nobody@localhost>: no such local user "
                          "nobody (no alias)")
    reply = rcpt_reply(daemon, f"nobody@{HOSTNAME}")
    assert reply.code == 550
    reply = rcpt_reply(daemon, "ghost")
    assert reply.code == 550
    assert reply.text == ("5.1.1 <ghost>: no such local user nobody-here "
                          "(no alias) (via ghost)")
    # swaks sees the refusal and gives up: nothing is queued or relayed.
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(daemon.port),
         "--from", "a@example.org", "--to", "nobody", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "550 5.1.1 <nobody>: no such local user nobody" in result.stdout
    upstream.assert_count_stays(0)


def test_without_aliases_file_local_names_are_refused(daemon, upstream):
    reply = rcpt_reply(daemon, "root")
    assert reply.code == 550
    assert "no such local user root (no alias)" in reply.text


def test_postmaster_accepted_without_aliases(daemon, upstream):
    """RFC 5321 4.5.1: RCPT TO:<postmaster> (any case, no domain) is
    accepted without an aliases file or a catch-all, and relayed as
    postmaster@mail_domain (here the default, the daemon's hostname);
    other local names are still refused."""
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(daemon.port),
         "--from", "a@example.org", "--to", "postmaster",
         "--header", "Subject: to the postmaster", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout
    assert " -> RCPT TO:<postmaster>\n<-  250 2.1.5 Ok" in result.stdout, \
        result.stdout
    send_message(daemon, make_message("PostMaster", "x\n"),
                 recipients=("PostMaster",))
    msgs = upstream.wait_messages(2)
    assert [m.rcpt_tos for m in msgs] == [[f"postmaster@{HOSTNAME}"]] * 2
    assert sorted(m.parsed()["Subject"] for m in msgs) == [
        "PostMaster", "to the postmaster"]
    assert rcpt_reply(daemon, "root").code == 550
    upstream.assert_count_stays(2, settle=1)


def test_catch_all(daemon_factory, upstream, aliases_file):
    daemon = daemon_factory(upstream.port, aliases=aliases_file,
                            local_catch_all="catch@example.com")
    send_message(daemon, make_message("c", "x\n"),
                 recipients=("nobody", "ghost@localhost", "root"))
    msg, = upstream.wait_messages(1)
    assert msg.rcpt_tos == ["catch@example.com", "boss@example.com",
                            "ops@EXAMPLE.com"]
    # a loop is still an error, catch-all or not
    assert rcpt_reply(daemon, "loop2").code == 550


def test_alias_expansion_counts_against_max_recipients(daemon_factory,
                                                       upstream,
                                                       aliases_file):
    daemon = daemon_factory(upstream.port, aliases=aliases_file,
                            limits={"max_recipients": 2})
    with RawSMTP(port=daemon.port) as c:
        c.greet()
        assert c.command("MAIL FROM:<a@example.org>").code == 250
        assert c.command("RCPT TO:<x@example.net>").code == 250
        # root stands for two addresses: with one taken, they do not fit
        # in this transaction
        assert c.command("RCPT TO:<root>").code == 452
        assert c.command("RSET").code == 250
        assert c.command("MAIL FROM:<a@example.org>").code == 250
        assert c.command("RCPT TO:<root>").code == 250
    daemon = daemon_factory(upstream.port, aliases=aliases_file,
                            limits={"max_recipients": 1})
    reply = rcpt_reply(daemon, "root")
    assert reply.code == 550
    assert reply.text.startswith("5.5.3 <root>: expands to more than 1")


SENDER_MAP = """\
# local user: address outside
alice: Alice.Smith@example.com
"""


def rewriting_daemon(daemon_factory, upstream, tmp_path, masquerade=True):
    return daemon_factory(
        upstream.port, mail_domain="example.com",
        sender_rewrite={"map": write(tmp_path / "sender-map", SENDER_MAP),
                        "masquerade": masquerade})


HEADERS_IN = (
    b"From: =?UTF-8?Q?Alice_Sm=C3=AFth?= <alice@localhost>\r\n"
    b"Sender: bob (the\r\n"
    b" operator)\r\n"
    b"Reply-To: \"Ops, Team\" <bob@localhost>,\r\n"
    b"\tother@example.net (not ours, with an @ in a comment)\r\n"
    b"To: root@example.net\r\n"
    b"Subject: =?UTF-8?B?w6ljaG8=?= from alice@localhost\r\n"
    b"X-Original-From: alice@localhost\r\n"
    b"\r\n")
HEADERS_OUT = (
    b"From: =?UTF-8?Q?Alice_Sm=C3=AFth?= <Alice.Smith@example.com>\r\n"
    b"Sender: bob@example.com (the\r\n"
    b" operator)\r\n"
    b"Reply-To: \"Ops, Team\" <bob@example.com>,\r\n"
    b"\tother@example.net (not ours, with an @ in a comment)\r\n"
    b"To: root@example.net\r\n"
    b"Subject: =?UTF-8?B?w6ljaG8=?= from alice@localhost\r\n"
    b"X-Original-From: alice@localhost\r\n"
    b"\r\n")
BODY = b"From: alice@localhost stays in the body\r\n.\r\n\r\nend\r\n"


def relayed_after_received(msg):
    """The relayed message below smarthostd's Received: header."""
    content = msg.content
    assert content.startswith(b"Received: ")
    end = content.index(b"\r\n", content.index(b"by " + HOSTNAME.encode()))
    while content[end + 2:end + 3] in (b" ", b"\t"):
        end = content.index(b"\r\n", end + 2)
    return content[end + 2:]


def test_sender_rewritten_in_envelope_and_headers(daemon_factory, upstream,
                                                  tmp_path):
    daemon = rewriting_daemon(daemon_factory, upstream, tmp_path)
    client = smtp_client(daemon)
    try:
        assert client.mail("alice")[0] == 250
        assert client.rcpt("root@example.net")[0] == 250
        code, _ = client.data(HEADERS_IN + BODY)
        assert code == 250
        assert client.mail("bob@localhost")[0] == 250
        assert client.rcpt("x@example.net")[0] == 250
        assert client.data(b"Subject: no from\r\n\r\nx\r\n")[0] == 250
        assert client.mail("carol@elsewhere.example")[0] == 250
        assert client.rcpt("x@example.net")[0] == 250
        assert client.data(HEADERS_IN + b"\r\n")[0] == 250
    finally:
        client.quit()
    # The three may travel in parallel sessions: match them by sender.
    by_sender = {m.mail_from: m for m in upstream.wait_messages(3)}
    assert sorted(by_sender) == ["Alice.Smith@example.com",
                                 "bob@example.com", "carol@elsewhere.example"]
    assert relayed_after_received(by_sender["Alice.Smith@example.com"]) == \
        HEADERS_OUT + BODY
    # The envelope sender is foreign; the headers still name local users.
    assert relayed_after_received(by_sender["carol@elsewhere.example"]) == \
        HEADERS_OUT + b"\r\n"
    daemon.wait_log(r"sender <alice> rewritten to <Alice\.Smith@example\.com>")


def test_without_masquerade_only_unqualified_senders_change(daemon_factory,
                                                            upstream,
                                                            tmp_path):
    daemon = rewriting_daemon(daemon_factory, upstream, tmp_path,
                              masquerade=False)
    msg_in = (b"From: root (Cron Daemon)\r\nSender: bob@localhost\r\n"
              b"Subject: x\r\n\r\nbody\r\n")
    send_message(daemon, msg_in, sender="cron")
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "cron@example.com"
    assert relayed_after_received(msg) == (
        b"From: root@example.com (Cron Daemon)\r\n"
        b"Sender: bob@localhost\r\nSubject: x\r\n\r\nbody\r\n")


def test_resent_block_rewritten(daemon_factory, upstream, tmp_path):
    """A message a local user resends (mutt's bounce, sendmail -t with a
    Resent- block): Resent-From/-Sender/-Reply-To change like their plain
    forms; the original originator and the resent recipients stay."""
    daemon = rewriting_daemon(daemon_factory, upstream, tmp_path)
    msg_in = (b"Resent-From: Alice <alice>\r\n"
              b"Resent-Sender: bob@localhost (the\r\n operator)\r\n"
              b"Resent-Reply-To: bob, other@example.net\r\n"
              b"Resent-To: root\r\n"
              b"From: carol@elsewhere.example\r\n"
              b"Subject: resent\r\n\r\nResent-From: alice\r\n")
    send_message(daemon, msg_in, sender="alice")
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "Alice.Smith@example.com"
    assert relayed_after_received(msg) == (
        b"Resent-From: Alice <Alice.Smith@example.com>\r\n"
        b"Resent-Sender: bob@example.com (the\r\n operator)\r\n"
        b"Resent-Reply-To: bob@example.com, other@example.net\r\n"
        b"Resent-To: root\r\n"
        b"From: carol@elsewhere.example\r\n"
        b"Subject: resent\r\n\r\nResent-From: alice\r\n")


def test_headers_rewritten_across_bdat_chunks(daemon_factory, upstream,
                                              tmp_path):
    """BDAT passes bytes as they come: the header section is cut in the
    middle of the From: address and spread over three chunks."""
    daemon = rewriting_daemon(daemon_factory, upstream, tmp_path)
    message = HEADERS_IN + BODY
    cut1 = message.index(b"alice@localhost") + 3
    cut2 = message.index(b"Reply-To") + 4
    chunks = [message[:cut1], message[cut1:cut2], message[cut2:]]
    with RawSMTP(port=daemon.port) as c:
        c.greet()
        assert c.command("MAIL FROM:<alice@localhost>").code == 250
        assert c.command("RCPT TO:<r@example.net>").code == 250
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
            reply = c.reply()
            assert reply.code == 250, reply
        c.command("QUIT")
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "Alice.Smith@example.com"
    assert relayed_after_received(msg) == HEADERS_OUT + BODY


def test_long_header_section_streams_unrewritten_tail(daemon_factory,
                                                      upstream, tmp_path):
    """Past 100 KiB of headers the rest streams as it came; the complete
    fields before the cut are still rewritten."""
    daemon = rewriting_daemon(daemon_factory, upstream, tmp_path)
    filler = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 60)
                      for i in range(1700))
    message = (b"From: alice\r\n" + filler + b"Reply-To: bob\r\n\r\n" +
               b"body\r\n")
    send_message(daemon, message, sender="a@example.org")
    msg, = upstream.wait_messages(1)
    relayed = relayed_after_received(msg)
    assert relayed.startswith(b"From: Alice.Smith@example.com\r\n")
    assert relayed.endswith(b"Reply-To: bob\r\n\r\nbody\r\n")
    assert filler in relayed
    daemon.wait_log(r"header section longer than 102400 bytes")


@pytest.mark.parametrize("target, why", [
    (":include:/etc/mail/list", ":include: files are not supported"),
    ('"|/usr/bin/procmail -f-"', "delivery to a command is not supported"),
    ("/var/mail/archive", "delivery to a file is not supported"),
])
def test_config_check_names_aliases_file_and_line(smarthostd_binary,
                                                  tmp_path, target, why):
    aliases = write(tmp_path / "aliases",
                    f"root: admin@example.com\n\n# bad:\nlist: ok@example.com,"
                    f"\n  {target}\n")
    conf = tmp_path / "smarthostd.conf"
    conf.write_text(f'aliases = "{aliases}";\n'
                    'relays = { up = { host = "127.0.0.1"; }; };\n')
    result = check_config(smarthostd_binary, conf)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{aliases}:4: alias list: " in result.stderr
    assert why in result.stderr
    write(tmp_path / "aliases", "root: admin@example.com\n")
    result = check_config(smarthostd_binary, conf)
    assert result.returncode == 0, result.stderr


def test_hup_reloads_the_aliases_file(daemon_factory, upstream, tmp_path):
    path = tmp_path / "aliases"
    write(path, "root: first@example.com\n")
    daemon = daemon_factory(upstream.port, aliases=str(path))
    send_message(daemon, make_message("1", "x\n"), recipients=("root",))
    assert upstream.wait_messages(1)[0].rcpt_tos == ["first@example.com"]

    write(path, "root: second@example.com\nops: ops@example.com\n")
    since = len(daemon.log().encode())
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b", since=since)
    send_message(daemon, make_message("2", "x\n"), recipients=("root",
                                                                "ops"))
    assert upstream.wait_messages(2)[1].rcpt_tos == ["second@example.com",
                                                     "ops@example.com"]

    # A broken file at reload: the error names it, the old table stays.
    write(path, "root: second@example.com\nops: |/bin/cat\n")
    since = len(daemon.log().encode())
    daemon.signal(signal.SIGHUP)
    match = daemon.wait_log(r"reload failed.*", since=since)
    assert f"{path}:2: alias ops" in match.group(0)
    send_message(daemon, make_message("3", "x\n"), recipients=("ops",))
    assert upstream.wait_messages(3)[2].rcpt_tos == ["ops@example.com"]
    assert os.path.exists(path)
