"""smarthost-sendmail, the sendmail(8) interface, driven by the programs
that use it (bsd-mailx, Python, git send-email, swaks -bs, Emacs), each
message checked at a real upstream: recipients, Bcc gone, headers added;
exit codes for the failures; mailq, -q, newaliases; the install links."""

import email.header
import email.utils
import os
import pwd
import re
import subprocess
import textwrap

import pytest

from harness import HOSTNAME, RawSMTP, random_body, wait_until

EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_CANTCREAT = 73
EX_NOPERM = 77
EX_PROTOCOL = 76


def sendmail(binary, daemon_or_conf, args, data=b"", env=None, timeout=30):
    """Runs smarthost-sendmail -C <config> args with data on stdin;
    daemon_or_conf is a Daemon or a config file's path."""
    conf = getattr(daemon_or_conf, "config_path", daemon_or_conf)
    if isinstance(data, str):
        data = data.encode()
    return subprocess.run([binary, "-C", conf, *args], input=data,
                          capture_output=True, timeout=timeout, env=env)


def me():
    pw = pwd.getpwuid(os.getuid())
    return pw.pw_name, pw.pw_gecos.split(",")[0]


def header_names(msg):
    return [name.lower() for name in msg.parsed().keys()]


def test_arguments_bare_lf_and_added_headers(daemon, upstream,
                                             sendmail_binary):
    token = os.urandom(6).hex()
    r = sendmail(sendmail_binary, daemon, ["b@example.net", "c@example.net"],
                 f"Subject: plain\n\nbody {token}\nsecond line\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    msg, = upstream.wait_messages(1)
    login, _ = me()
    assert msg.mail_from == f"{login}@{HOSTNAME}"
    assert msg.rcpt_tos == ["b@example.net", "c@example.net"]
    assert f"body {token}\r\nsecond line\r\n".encode() in msg.content
    assert b"\n" not in msg.content.replace(b"\r\n", b"")
    parsed = msg.parsed()
    assert email.utils.parseaddr(parsed["From"])[1] == f"{login}@{HOSTNAME}"
    assert email.utils.parsedate_tz(parsed["Date"]) is not None
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(HOSTNAME)}>",
                        parsed["Message-ID"])
    assert parsed["Subject"] == "plain"


def test_mail_domain_and_sender_options(daemon_factory, upstream,
                                        sendmail_binary):
    daemon = daemon_factory(upstream.port, mail_domain="mail.example.com")
    r = sendmail(sendmail_binary, daemon, ["b@example.net"], "no header\n")
    assert r.returncode == 0, r.stderr
    r = sendmail(sendmail_binary, daemon,
                 ["-f", "jane@example.org", "-F", "Doe, Jane", "-oi",
                  "b@example.net"], "Subject: f\n\nx\n")
    assert r.returncode == 0, r.stderr
    r = sendmail(sendmail_binary, daemon, ["-r", "<>", "b@example.net"],
                 "From: Robot <robot@example.org>\nDate: Mon, 1 Jan 2024 "
                 "00:00:00 +0000\nMessage-ID: <keep@example.org>\n\nx\n")
    assert r.returncode == 0, r.stderr
    first, second, third = upstream.wait_messages(3)
    login, _ = me()
    assert first.mail_from == f"{login}@mail.example.com"
    assert email.utils.parseaddr(first.parsed()["From"])[1] == \
        f"{login}@mail.example.com"
    assert first.content.endswith(b"\r\n\r\nno header\r\n")
    assert second.mail_from == "jane@example.org"
    assert second.parsed()["From"] == '"Doe, Jane" <jane@example.org>'
    # Present fields are kept as they are, none is added twice.
    assert third.mail_from == ""
    parsed = third.parsed()
    assert parsed["Message-ID"] == "<keep@example.org>"
    assert parsed["Date"] == "Mon, 1 Jan 2024 00:00:00 +0000"
    assert header_names(third).count("date") == 1
    assert header_names(third).count("from") == 1


def test_sender_map_applies_to_login_at_mail_domain(daemon_factory, upstream,
                                                   sendmail_binary, tmp_path):
    """ssmtp's revaliases habit: the caller's login maps to an address of
    its own. sendmail's default sender is login@mail_domain, which is not a
    local domain; the map must still apply, to envelope and From:."""
    login, _ = me()
    sender_map = tmp_path / "sender-map"
    sender_map.write_text(f"{login}: The.Admin@example.org\n")
    sender_map.chmod(0o644)
    daemon = daemon_factory(upstream.port, mail_domain="mail.example.com",
                            sender_rewrite={"map": str(sender_map)})
    r = sendmail(sendmail_binary, daemon, ["b@example.net"],
                 "Subject: mapped\n\nx\n")
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "The.Admin@example.org"
    assert email.utils.parseaddr(msg.parsed()["From"])[1] == \
        "The.Admin@example.org"


def test_unprivileged_user(daemon, upstream, sendmail_binary):
    """An ordinary user (nobody) sends: the sender and From: are that
    user's; the queue stays closed to them."""
    os.chmod(daemon.workdir, 0o711)   # the socket and config are in it
    nobody = pwd.getpwnam("nobody")
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}",
                 f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
    r = subprocess.run([*as_nobody, sendmail_binary, "-C",
                        daemon.config_path, "b@example.net"],
                       input=b"Subject: from nobody\n\nhi\n",
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == f"nobody@{HOSTNAME}"
    name = nobody.pw_gecos.split(",")[0]
    assert email.utils.parseaddr(msg.parsed()["From"]) == (
        name, f"nobody@{HOSTNAME}")
    r = subprocess.run([*as_nobody, sendmail_binary, "-C",
                        daemon.config_path, "-bp"], capture_output=True,
                       timeout=30)
    assert r.returncode == EX_NOPERM
    assert b"only root and the daemon's user" in r.stderr


def test_eight_bit_body_and_name(daemon, upstream, sendmail_binary):
    body = "Grüße, ½ € — ok\n"
    r = sendmail(sendmail_binary, daemon,
                 ["-F", "José Núñez", "b@example.net"],
                 f"Subject: 8bit\n\n{body}")
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.content.endswith(body.replace("\n", "\r\n").encode())
    name, addr = email.utils.parseaddr(msg.parsed()["From"])
    assert str(email.header.make_header(email.header.decode_header(name))) \
        == "José Núñez"
    assert addr == f"{me()[0]}@{HOSTNAME}"


def test_lone_dot_ends_input_unless_i(daemon, upstream, sendmail_binary):
    text = "Subject: dots\n\nbefore\n..two\n.\nafter\n"
    r = sendmail(sendmail_binary, daemon, ["b@example.net"], text)
    assert r.returncode == 0, r.stderr
    for flag in ("-i", "-oi"):
        r = sendmail(sendmail_binary, daemon, [flag, "b@example.net"], text)
        assert r.returncode == 0, r.stderr
    msgs = upstream.wait_messages(3)
    assert msgs[0].content.endswith(b"\r\n\r\nbefore\r\n..two\r\n")
    for msg in msgs[1:]:
        assert msg.content.endswith(
            b"\r\n\r\nbefore\r\n..two\r\n.\r\nafter\r\n")


def test_large_message(daemon, upstream, sendmail_binary):
    """More than any socket buffer: sendmail waits for the daemon."""
    body = random_body(8 * 1024 * 1024).replace(b"\r\n", b"\n")
    r = sendmail(sendmail_binary, daemon, ["-i", "b@example.net"],
                 b"Subject: big\n\n" + body, timeout=120)
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1, timeout=60)
    assert msg.content.endswith(b"\r\n\r\n" +
                                body.replace(b"\n", b"\r\n"))


def test_python_t_with_bcc(daemon, upstream, sendmail_binary):
    """A Python program's usual way: subprocess with -t -oi."""
    text = textwrap.dedent("""\
        From: App <app@example.org>
        To: Ann <ann@example.net>, bob@example.net
        Cc: "Carl, C." <carl@example.net>
        Bcc: hidden@example.net,
         other-hidden@example.net
        Subject: python -t

        Hello from Python.
        """)
    proc = subprocess.Popen(
        [sendmail_binary, "-C", daemon.config_path, "-t", "-oi",
         "extra@example.net"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(text.encode(), timeout=30)
    assert proc.returncode == 0, err
    msg, = upstream.wait_messages(1)
    assert sorted(msg.rcpt_tos) == sorted([
        "ann@example.net", "bob@example.net", "carl@example.net",
        "hidden@example.net", "other-hidden@example.net",
        "extra@example.net"])
    assert b"hidden" not in msg.content
    assert "bcc" not in header_names(msg)
    assert msg.mail_from == f"{me()[0]}@{HOSTNAME}"
    assert msg.parsed()["From"] == "App <app@example.org>"


def test_t_resent_set(daemon, upstream, sendmail_binary):
    text = ("From: a@example.org\nTo: original@example.net\n"
            "Resent-From: fwd@example.org\nResent-To: new@example.net\n"
            "Resent-Bcc: secret@example.net\nSubject: resent\n\nx\n")
    r = sendmail(sendmail_binary, daemon, ["-t"], text)
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert sorted(msg.rcpt_tos) == ["new@example.net", "secret@example.net"]
    assert b"secret@" not in msg.content
    assert b"To: original@example.net" in msg.content


def test_overlong_lines_are_split(daemon, upstream, sendmail_binary):
    body = "x" * 2500
    r = sendmail(sendmail_binary, daemon, ["b@example.net"],
                 f"Subject: long\n\n{body}\nend\n")
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    lines = msg.content.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert msg.content.endswith(
        b"\r\n\r\n" + b"x" * 998 + b"\r\n" + b"x" * 998 + b"\r\n" +
        b"x" * 504 + b"\r\nend\r\n")


def mailx_env(sendmail_binary, daemon, tmp_path):
    """An environment in which bsd-mailx sends through smarthost-sendmail:
    its "sendmail" variable names a wrapper that adds -C (mailx runs the
    program with its own arguments only)."""
    wrapper = tmp_path / "sendmail"
    wrapper.write_text(f"#!/bin/sh\nexec '{sendmail_binary}' -C "
                       f"'{daemon.config_path}' \"$@\"\n")
    wrapper.chmod(0o755)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={wrapper}\n")
    return dict(os.environ, MAILRC=str(mailrc), HOME=str(tmp_path))


def test_bsd_mailx(daemon, upstream, sendmail_binary, tmp_path):
    """bsd-mailx, the mail(1) of Debian, with a subject and a Cc."""
    env = mailx_env(sendmail_binary, daemon, tmp_path)
    r = subprocess.run(["/usr/bin/bsd-mailx", "-s", "from mailx",
                        "-c", "cc@example.net", "to@example.net"],
                       input=b"mailx body\n", capture_output=True, env=env,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert sorted(msg.rcpt_tos) == ["cc@example.net", "to@example.net"]
    parsed = msg.parsed()
    assert parsed["Subject"] == "from mailx"
    login, _ = me()
    assert email.utils.parseaddr(parsed["From"])[1] == f"{login}@{HOSTNAME}"
    assert parsed["Message-ID"] and parsed["Date"]
    assert msg.content.endswith(b"mailx body\r\n")


def test_cron_style_mail_to_root(daemon_factory, upstream, sendmail_binary,
                                 tmp_path):
    """What cron does with a job's output: mail(1) to the local "root",
    no tty; the aliases file sends it to the administrators."""
    aliases = tmp_path / "aliases"
    aliases.write_text("# who reads root's mail\n"
                       "root: admin@example.net, ops@example.net\n")
    daemon = daemon_factory(upstream.port, aliases=str(aliases))
    env = mailx_env(sendmail_binary, daemon, tmp_path)
    r = subprocess.run(
        "echo 'job output' | mail -s \"Cron <root@host> run-job\" root",
        shell=True, capture_output=True, env=env, stdin=subprocess.DEVNULL,
        timeout=30)
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert sorted(msg.rcpt_tos) == ["admin@example.net", "ops@example.net"]
    assert msg.parsed()["Subject"] == "Cron <root@host> run-job"
    assert msg.content.endswith(b"job output\r\n")
    # Debian's cron itself: its command line and its header, to root.
    r = sendmail(sendmail_binary, daemon,
                 ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                 "From: root (Cron Daemon)\nTo: root\n"
                 "Subject: Cron <root@host> backup\n"
                 "MIME-Version: 1.0\nContent-Type: text/plain; "
                 "charset=UTF-8\nContent-Transfer-Encoding: 8bit\n"
                 "X-Cron-Env: <SHELL=/bin/sh>\n\nbackup done\n")
    assert r.returncode == 0, r.stderr
    first, second = upstream.wait_messages(2)
    assert sorted(second.rcpt_tos) == ["admin@example.net",
                                       "ops@example.net"]
    assert second.parsed()["Subject"] == "Cron <root@host> backup"
    # A local name without an alias: refused, the exit status says so.
    r = sendmail(sendmail_binary, daemon, ["nobody-here"], "x\n")
    assert r.returncode == EX_UNAVAILABLE
    assert b"RCPT TO:<nobody-here>: 550 5.1.1" in r.stderr, r.stderr
    upstream.assert_count_stays(2, settle=1.0)


def test_git_send_email(daemon, upstream, sendmail_binary, tmp_path):
    repo = tmp_path / "repo"
    env = dict(os.environ, HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="Git Author",
               GIT_AUTHOR_EMAIL="author@example.org",
               GIT_COMMITTER_NAME="Git Author",
               GIT_COMMITTER_EMAIL="author@example.org")

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True,
                              capture_output=True, timeout=60)

    repo.mkdir()
    git("init", "-q")
    (repo / "file.txt").write_text("hello\n")
    git("add", "file.txt")
    git("commit", "-q", "-m", "Add a file\n\nA throwaway commit.")
    git("format-patch", "-1", "-o", str(tmp_path / "patches"))
    patch, = (tmp_path / "patches").iterdir()
    r = subprocess.run(
        ["git", "send-email", "--confirm=never", "--quiet",
         f"--sendmail-cmd={sendmail_binary} -C {daemon.config_path}",
         "--from=Git Author <author@example.org>",
         "--envelope-sender=auto", "--suppress-cc=all",
         "--to=list@example.net", "--cc=reviewer@example.net",
         str(patch)],
        cwd=repo, env=env, capture_output=True, timeout=60,
        stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.mail_from == "author@example.org"
    assert sorted(msg.rcpt_tos) == ["list@example.net",
                                    "reviewer@example.net"]
    parsed = msg.parsed()
    assert parsed["From"] == "Git Author <author@example.org>"
    assert parsed["Subject"] == "[PATCH] Add a file"
    assert b"+hello\r\n" in msg.content


def test_swaks_bs(daemon, upstream, sendmail_binary):
    token = os.urandom(6).hex()
    r = subprocess.run(
        ["swaks", "--pipe",
         f"{sendmail_binary} -C {daemon.config_path} -bs",
         "--from", "s@example.org", "--to", "b@example.net",
         "--helo", "client.test", "--header", "Subject: -bs",
         "--body", token, "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"<-  250 .*queued as [0-9A-F]{16}", r.stdout), r.stdout
    msg, = upstream.wait_messages(1)
    assert (msg.mail_from, msg.rcpt_tos) == ("s@example.org",
                                             ["b@example.net"])
    assert token.encode() in msg.content


def test_bs_large_message(daemon, upstream, sendmail_binary, tmp_path):
    """-bs relays more than any socket buffer holds, both ways."""
    body = tmp_path / "body"
    body.write_bytes(random_body(8 * 1024 * 1024))
    r = subprocess.run(
        ["swaks", "--pipe",
         f"{sendmail_binary} -C {daemon.config_path} -bs",
         "--from", "s@example.org", "--to", "b@example.net",
         "--helo", "client.test", "--body", f"@{body}",
         "--suppress-data", "--timeout", "60"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    msg, = upstream.wait_messages(1, timeout=60)
    assert body.read_bytes() in msg.content


def test_bs_when_daemon_is_down(sendmail_binary, tmp_path):
    """-bs with the daemon down: the dialogue runs in sendmail and each
    message goes to postdrop (a stand-in here; the real one and the
    daemon's import are in test_maildrop.py); a failing postdrop is a
    451 for that message, and the session goes on."""
    conf = _down_config(tmp_path)
    env = fake_postdrop(tmp_path)
    dialogue = (b"EHLO x\r\nMAIL FROM:<s@example.org>\r\n"
                b"RCPT TO:<b@example.net>\r\nDATA\r\nSubject: bs\r\n\r\n"
                b"..x\r\n.\r\nQUIT\r\n")
    r = sendmail(sendmail_binary, conf, ["-bs"], dialogue, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split(b"\r\n")
    assert lines[0].startswith(b"220 ") and b"not running" in lines[0]
    assert b"\r\n250 2.0.0 Ok: queued in the maildrop;" in r.stdout
    assert lines[-2:] == [b"221 2.0.0 Bye", b""]
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:6] == ["-C", conf, "-f", "s@example.org", "--",
                        "b@example.net"]
    assert (tmp_path / "input").read_bytes() == b"Subject: bs\r\n\r\n.x\r\n"
    r = sendmail(sendmail_binary, conf, ["-bs"], dialogue,
                 env=dict(env, FAIL="1"))
    assert b"\r\n451 4.3.0 the maildrop refused the message" in r.stdout
    assert r.stdout.endswith(b"\r\n221 2.0.0 Bye\r\n")
    assert b"postdrop: maildrop full" in r.stderr
    r = sendmail(sendmail_binary, conf, ["-bs"], b"EHLO x\r\n", env=env)
    assert r.returncode == EX_PROTOCOL
    assert b"ended without QUIT" in r.stderr


def test_emacs_message_mode(daemon, upstream, sendmail_binary, tmp_path):
    token = os.urandom(6).hex()
    elisp = f"""
      (progn
        (require 'message)
        (setq sendmail-program "{sendmail_binary}"
              message-sendmail-extra-arguments '("-C" "{daemon.config_path}")
              message-send-mail-function 'message-send-mail-with-sendmail
              message-sendmail-envelope-from 'header
              user-mail-address "emacs@example.org"
              user-full-name "Emacs User"
              message-interactive t)
        (message-mail "to@example.net" "from emacs")
        (message-goto-body)
        (insert "emacs body {token}\\n")
        (message-send-and-exit))
    """
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run(["emacs", "-Q", "--batch", "--eval", elisp],
                       capture_output=True, env=env, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.rcpt_tos == ["to@example.net"]
    assert msg.mail_from == "emacs@example.org"
    parsed = msg.parsed()
    assert parsed["Subject"] == "from emacs"
    assert email.utils.parseaddr(parsed["From"]) == ("Emacs User",
                                                     "emacs@example.org")
    assert parsed["Message-ID"] and parsed["Date"]
    assert f"emacs body {token}".encode() in msg.content


# ---- failures and their exit codes ----

def test_usage_errors(daemon, upstream, sendmail_binary):
    for args in (["-k", "b@example.net"], ["-bd"], ["-f"],
                 ["-bp", "b@example.net"]):
        r = sendmail(sendmail_binary, daemon, args, "x\n")
        assert r.returncode == EX_USAGE, (args, r.stderr)
        assert r.stderr.startswith(b"smarthost-sendmail: "), r.stderr
        assert b"usage:" in r.stderr
    # Accepted and ignored.
    r = sendmail(sendmail_binary, daemon,
                 ["-B", "8BITMIME", "-N", "never", "-L", "tag", "-oem",
                  "-OErrorMode=m", "-U", "-v", "b@example.net"],
                 "Subject: ignored options\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert b">>> DATA" in r.stderr and b"<<< 354" in r.stderr
    upstream.wait_messages(1)


def test_no_recipients_nul_and_refusal(daemon, upstream, sendmail_binary):
    r = sendmail(sendmail_binary, daemon, [], "Subject: x\n\ny\n")
    assert r.returncode == EX_USAGE
    assert b"no recipients" in r.stderr
    r = sendmail(sendmail_binary, daemon, ["-t"], "Subject: x\n\ny\n")
    assert r.returncode == EX_USAGE
    assert b"none in To:, Cc: or Bcc:" in r.stderr
    r = sendmail(sendmail_binary, daemon, ["b@example.net"],
                 b"Subject: x\n\nnul\x00byte\n")
    assert r.returncode == EX_DATAERR
    assert b"line 3 contains a NUL byte" in r.stderr
    # The daemon refuses a recipient: nothing is sent to anyone.
    r = sendmail(sendmail_binary, daemon, ["b@example.net", "bad@"],
                 "Subject: x\n\ny\n")
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    assert re.search(rb"RCPT TO:<bad@>: 5\d\d ", r.stderr), r.stderr
    assert len(r.stderr.strip().split(b"\n")) == 1
    upstream.assert_count_stays(0, settle=1.0)


def test_config_error(sendmail_binary, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("hostname = ;\n")
    r = sendmail(sendmail_binary, str(conf), ["b@example.net"], "x\n")
    assert r.returncode == EX_CONFIG
    assert str(conf).encode() + b":1" in r.stderr


def _down_config(tmp_path):
    conf = tmp_path / "down.conf"
    conf.write_text(textwrap.dedent(f"""\
        hostname = "{HOSTNAME}";
        spool = "{tmp_path}/spool";
        listen = ( {{ path = "{tmp_path}/nobody-listens.sock"; }} );
        default_relay = "up";
        relays = {{ up = {{ host = "127.0.0.1"; port = "1"; }}; }};
        """))
    return str(conf)


def test_daemon_down_without_postdrop(sendmail_binary, tmp_path):
    conf = _down_config(tmp_path)
    env = dict(os.environ, SMARTHOST_POSTDROP=str(tmp_path / "none"))
    r = sendmail(sendmail_binary, conf, ["b@example.net"], "x\n", env=env)
    assert r.returncode == EX_TEMPFAIL
    err = r.stderr.decode()
    assert "not reachable at unix:" in err and "message not sent" in err
    assert len(err.strip().split("\n")) == 1


def fake_postdrop(tmp_path):
    """A stand-in for smarthost-postdrop that records its arguments and
    input, and fails with 73 when FAIL is set; the environment that makes
    sendmail run it."""
    fake = tmp_path / "postdrop"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        printf '%s\\n' "$@" > '{tmp_path}/args'
        cat > '{tmp_path}/input'
        [ -z "$FAIL" ] || {{ echo "postdrop: maildrop full" >&2; exit 73; }}
        """))
    fake.chmod(0o755)
    return dict(os.environ, SMARTHOST_POSTDROP=str(fake))


def test_daemon_down_goes_to_postdrop(sendmail_binary, tmp_path):
    """The fallback as sendmail sees it, with a stand-in postdrop (the real
    one and the maildrop are tested with the daemon's importer)."""
    conf = _down_config(tmp_path)
    env = fake_postdrop(tmp_path)
    r = sendmail(sendmail_binary, conf, ["-f", "s@example.org",
                                         "b@example.net"],
                 "Subject: dropped\n\nbody\n", env=env)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:6] == ["-C", conf, "-f", "s@example.org", "--",
                        "b@example.net"]
    data = (tmp_path / "input").read_bytes()
    assert data.startswith(b"Subject: dropped\r\n")
    assert b"\r\nMessage-ID: <" in data and b"\r\nDate: " in data
    assert data.endswith(b"\r\n\r\nbody\r\n")
    r = sendmail(sendmail_binary, conf, ["b@example.net"], "x\n",
                 env=dict(env, FAIL="1"))
    assert r.returncode == EX_CANTCREAT
    assert b"postdrop: maildrop full" in r.stderr


def test_daemon_turning_sessions_away_goes_to_postdrop(
        daemon_factory, upstream, sendmail_binary, tmp_path):
    """A 421 greeting (too many sessions, shutting down) is a daemon that
    cannot take the mail now: the maildrop takes it."""
    daemon = daemon_factory(upstream.port, limits={"max_sessions": 1})
    with RawSMTP(path=daemon.unix_path) as holder:
        holder.greet()
        env = fake_postdrop(tmp_path)
        r = sendmail(sendmail_binary, daemon, ["b@example.net"],
                     "Subject: busy\n\nx\n", env=env)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "input").read_bytes().endswith(b"\r\n\r\nx\r\n")
        r = sendmail(sendmail_binary, daemon, ["b@example.net"], "x\n",
                     env=dict(env, SMARTHOST_POSTDROP="/nonexistent"))
        assert r.returncode == EX_TEMPFAIL
        assert b"(greeting: 421 4.3.2 Too many connections" in r.stderr
        holder.command("QUIT")
    upstream.assert_count_stays(0, settle=0.5)


# ---- mailq, -q, newaliases ----

def test_mailq_and_flush(daemon_factory, upstream_factory, sendmail_binary,
                         tmp_path):
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port,
                            queue={"retry_min": 3600, "retry_max": 3600})
    r = sendmail(sendmail_binary, daemon, ["queued@example.net"],
                 "Subject: wait\n\nx\n")
    assert r.returncode == 0, r.stderr
    daemon.wait_log(r"to=<queued@example\.net>.*status=deferred")
    # mailq by its name (argv[0]), and -bp.
    link = tmp_path / "mailq"
    link.symlink_to(sendmail_binary)
    for cmd in ([str(link), "-C", daemon.config_path],
                [sendmail_binary, "-C", daemon.config_path, "-bp"]):
        r = subprocess.run(cmd, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "queued@example.net" in out and "-- 1 message" in out, out
    upstream.start()
    r = sendmail(sendmail_binary, daemon, ["-q"])
    assert r.returncode == 0, r.stderr
    msg, = upstream.wait_messages(1)
    assert msg.rcpt_tos == ["queued@example.net"]
    wait_until(lambda: b"queue is empty" in sendmail(
        sendmail_binary, daemon, ["-bp"]).stdout, 15, "an empty queue")
    daemon.terminate()
    r = sendmail(sendmail_binary, daemon, ["-bp"])
    assert r.returncode == EX_UNAVAILABLE
    assert b"is smarthostd running?" in r.stderr


def test_newaliases(daemon_factory, upstream, sendmail_binary, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("root: admin@example.net\npostmaster: root\n")
    daemon = daemon_factory(upstream.port, aliases=str(aliases))
    link = tmp_path / "newaliases"
    link.symlink_to(sendmail_binary)

    def newaliases():
        return subprocess.run([str(link), "-C", daemon.config_path],
                              capture_output=True, timeout=30)

    r = newaliases()
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{daemon.config_path}: valid, 2 aliases\n".encode()
    aliases.write_text("root: admin@example.net\nbad: |/bin/sh\n")
    r = newaliases()
    assert r.returncode == EX_CONFIG
    assert f"{aliases}:2".encode() in r.stderr, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text('hostname = "x";\nno_such_option = 1;\n')
    r = subprocess.run([str(link), "-C", str(bad)], capture_output=True,
                       timeout=30)
    assert r.returncode == EX_CONFIG
    assert f"{bad}:2".encode() in r.stderr


# ---- make install-sendmail-links ----

def test_install_sendmail_links(tmp_path):
    builddir = os.environ.get("TOP_BUILDDIR")
    if not builddir:
        pytest.fail("TOP_BUILDDIR must name the build tree")
    dest = tmp_path / "root"
    sbindir = "/opt/shd-test/sbin"
    target = f"{sbindir}/smarthost-sendmail"
    # Not the outer make's flags (-w, its jobserver): a make of its own.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(*args, goal="install-sendmail-links"):
        return subprocess.run(
            ["make", "-s", "-C", builddir, goal, f"DESTDIR={dest}",
             f"sbindir={sbindir}", *args],
            capture_output=True, text=True, timeout=60, env=env)

    links = ["usr/sbin/sendmail", "usr/lib/sendmail", "usr/bin/mailq",
             "usr/bin/newaliases"]
    (dest / "usr/bin").mkdir(parents=True)
    foreign = dest / "usr/bin/mailq"
    foreign.write_text("another MTA's mailq\n")

    r = make()
    assert r.returncode != 0
    assert "usr/bin/mailq exists and is not a link" in r.stderr
    assert foreign.read_text() == "another MTA's mailq\n"
    for link in links:
        if link != "usr/bin/mailq":
            assert os.readlink(dest / link) == target

    r = make()   # again: the links that are ours are fine
    assert r.returncode != 0 and "already a link" in r.stdout

    r = make("FORCE=1")
    assert r.returncode == 0, r.stderr
    for link in links:
        assert os.readlink(dest / link) == target

    r = make(goal="uninstall-sendmail-links")
    assert r.returncode == 0, r.stderr
    assert not any(os.path.lexists(dest / link) for link in links)
