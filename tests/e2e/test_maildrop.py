"""The maildrop: smarthost-postdrop accepts mail while the daemon is
stopped, the daemon imports it at start and whenever a file appears
(inotify), validates every file and moves forged ones aside."""

import os
import pwd
import re
import shutil
import stat
import subprocess
import time

import pytest

from harness import (HOSTNAME, assert_relayed, make_message, render_config,
                     rewrite_config, send_message)
from localuser import (DROP_GROUP, as_user, ensure_group, ensure_user,
                       open_for_user, python_as, require_root, setgid_copy)

EX_DATAERR = 65
EX_NOPERM = 77


def postdrop(binary, daemon, message, sender, recipients, user=None,
             extra=()):
    argv = [binary, "-C", daemon.config_path, "-f", sender, *extra, "--",
            *recipients]
    if user is None:
        return subprocess.run(argv, input=message, capture_output=True,
                               timeout=30)
    return as_user(user, argv, input=message, capture_output=True,
                   timeout=30)


def maildrop_dir(daemon):
    return os.path.join(daemon.workdir, "spool", "maildrop")


def corrupt_files(daemon):
    directory = os.path.join(daemon.workdir, "spool", "corrupt")
    return sorted(n for n in os.listdir(directory)
                  if n.startswith("maildrop."))


def drop_files(daemon):
    return sorted(os.listdir(maildrop_dir(daemon)))


def test_root_postdrop_while_stopped_then_relayed(stopped_daemon, upstream,
                                                  postdrop_binary):
    daemon = stopped_daemon
    sent = make_message("dropped", "written while the daemon was down\n",
                        sender=f"root@{HOSTNAME}")
    done = postdrop(postdrop_binary, daemon, sent, f"root@{HOSTNAME}",
                    ["b@example.net"])
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert len(drop_files(daemon)) == 1
    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert got.mail_from == f"root@{HOSTNAME}"
    assert got.rcpt_tos == ["b@example.net"]
    assert_relayed(got, sent)
    received = got.parsed()["Received"]
    assert "from userid 0" in received, received
    assert "[maildrop]" in received, received
    daemon.wait_log(r"client=localhost\[maildrop\], uid=0\b")
    daemon.wait_log(r"maildrop: \S+: imported from uid=0: 250 ")
    assert drop_files(daemon) == []


def test_bare_lf_becomes_crlf_and_bare_sender_is_qualified(
        stopped_daemon, upstream, postdrop_binary):
    daemon = stopped_daemon
    done = postdrop(postdrop_binary, daemon,
                    b"Subject: lf\n\nline one\nline two", "root",
                    ["b@example.net"])
    assert done.returncode == 0, done.stderr
    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert got.mail_from == f"root@{HOSTNAME}"
    assert got.content.endswith(b"Subject: lf\r\n\r\nline one\r\n"
                                b"line two\r\n")


def test_unprivileged_user_through_setgid_postdrop(stopped_daemon, upstream,
                                                   postdrop_binary):
    require_root()
    daemon = stopped_daemon
    user = ensure_user()
    group = ensure_group()
    bindir = os.path.join(daemon.workdir, "bin")
    os.mkdir(bindir, 0o755)
    binary = setgid_copy(postdrop_binary, bindir, group)
    sender = f"{user.pw_name}@{HOSTNAME}"
    sent = make_message("from a user", "hello\n", sender=sender)

    done = postdrop(binary, daemon, sent, sender, ["b@example.net"],
                    user=user)
    assert done.returncode == 0, done.stderr
    names = drop_files(daemon)
    assert len(names) == 1
    st = os.lstat(os.path.join(maildrop_dir(daemon), names[0]))
    assert st.st_uid == user.pw_uid
    assert st.st_gid == group.gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o640
    md = os.stat(maildrop_dir(daemon))
    assert stat.S_IMODE(md.st_mode) == 0o1730
    assert md.st_gid == group.gr_gid

    # Without the setgid bit the user may not write there at all.
    done = postdrop(postdrop_binary, daemon, sent, sender, ["b@example.net"],
                    user=user)
    assert done.returncode == EX_NOPERM, done.stderr
    assert done.stderr.decode().startswith("smarthost-postdrop: ")
    assert len(drop_files(daemon)) == 1

    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert_relayed(got, sent)
    assert f"from userid {user.pw_uid}" in got.parsed()["Received"]
    daemon.wait_log(rf"client=localhost\[maildrop\], uid={user.pw_uid}\b")
    upstream.assert_count_stays(1, settle=1.0)


def test_inotify_import_while_running(daemon_factory, upstream,
                                      postdrop_binary):
    daemon = daemon_factory(upstream.port)
    sent = make_message("live", "imported at once\n")
    started = time.monotonic()
    done = postdrop(postdrop_binary, daemon, sent, "a@example.org",
                    ["b@example.net", "c@example.net"])
    assert done.returncode == 0, done.stderr
    # The periodic rescan is 60 s away: only inotify makes this fast.
    got = upstream.wait_messages(1, timeout=20)[0]
    assert time.monotonic() - started < 30
    assert sorted(got.rcpt_tos) == ["b@example.net", "c@example.net"]
    assert_relayed(got, sent)


def test_postdrop_refuses_bad_input(daemon_factory, upstream,
                                    postdrop_binary):
    daemon = daemon_factory(upstream.port,
                            limits={"max_message_size": "100K"})
    done = postdrop(postdrop_binary, daemon, b"x\n", "a@example.org",
                    ["not an address"])
    assert done.returncode == EX_DATAERR
    assert b"bad recipient address" in done.stderr
    assert done.stderr.count(b"\n") == 1
    big = b"Subject: big\n\n" + (b"x" * 999 + b"\n") * 200
    done = postdrop(postdrop_binary, daemon, big, "a@example.org",
                    ["b@example.net"])
    assert done.returncode == EX_DATAERR, done.stderr
    assert b"too large" in done.stderr
    # Nothing is left behind, not even a temporary file.
    assert drop_files(daemon) == []


def valid_file(uid, body=b"Subject: ok\r\n\r\nok\r\n",
               sender="a@example.org", rcpt="b@example.net"):
    head = (f"smarthost-maildrop 1\nuid {uid}\nsender <{sender}>\n"
            f"rcpt <{rcpt}>\n\n").encode()
    return head + body + f"end {len(body)}\n".encode()


def test_forged_files_moved_aside(stopped_daemon, upstream):
    require_root()
    daemon = stopped_daemon
    user = ensure_user()
    drop = maildrop_dir(daemon)

    def write(name, data, owner=0):
        path = os.path.join(drop, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, owner, -1)

    write("1-garbage", b"GET / HTTP/1.0\r\n\r\n")
    write("2-truncated", valid_file(0)[:-3])
    body = b"Subject: ok\r\n\r\nok\r\n"
    write("3-extended", valid_file(0, body=body + b"more\r\n").replace(
        b"end %d" % (len(body) + 6), b"end %d" % len(body)))
    write("4-foreign", valid_file(0), owner=user.pw_uid)
    write("5-badheader", valid_file(0).replace(b"uid 0", b"uid 0\nx y"))
    os.symlink("/etc/passwd", os.path.join(drop, "6-symlink"))
    os.mkfifo(os.path.join(drop, "7-fifo"))
    write("8-good", valid_file(0))

    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert got.content.endswith(b"Subject: ok\r\n\r\nok\r\n")
    daemon.wait_log(r"maildrop: 7-fifo .*moved to corrupt/")
    log = daemon.log(daemon.run_start)
    for name, why in [("1-garbage", "bad magic"),
                      ("2-truncated", "truncated"),
                      ("3-extended", "does not match"),
                      ("4-foreign", f"claims uid 0 but is owned by uid "
                                    f"{user.pw_uid}"),
                      ("5-badheader", "unknown key"),
                      ("6-symlink", "symbolic link"),
                      ("7-fifo", "not a regular file")]:
        assert re.search(rf"maildrop: {name} \(owner uid=\d+\): .*{why}.*"
                         r"moved to corrupt/maildrop\.", log), (name, log)
    assert len(corrupt_files(daemon)) == 7
    assert drop_files(daemon) == []
    # /etc/passwd was not followed, and is still there.
    assert os.path.exists("/etc/passwd")
    # The daemon is healthy: it still takes and relays mail.
    assert daemon.running()
    sent = make_message("after", "still here\n")
    send_message(daemon, sent)
    upstream.wait_messages(2)
    upstream.assert_count_stays(2, settle=1.0)


def refusing_daemon(daemon_factory, upstream, postdrop_binary, aliases):
    """A daemon with the "own" sender policy and the given aliases file
    text, whose maildrop a user can write through a setgid postdrop;
    returns it and that postdrop."""
    ensure_user()
    group = ensure_group()
    daemon = daemon_factory(upstream.port, start=False,
                            maildrop_group=DROP_GROUP,
                            sender_policy={"mode": "own"})
    # In the work directory: postdrop, as the user, reads the config and
    # the aliases file it names.
    path = os.path.join(daemon.workdir, "aliases")
    with open(path, "w", encoding="utf-8") as f:
        f.write(aliases)
    os.chmod(path, 0o644)
    daemon.settings["aliases"] = path
    rewrite_config(daemon, render_config(daemon.settings))
    open_for_user(daemon.workdir)
    daemon.start()
    bindir = os.path.join(daemon.workdir, "bin")
    os.mkdir(bindir, 0o755)
    return daemon, setgid_copy(postdrop_binary, bindir, group)


def returned_notice(upstream, to):
    """The one non-delivery notification relayed, checked for the
    envelope and the headers every notification has; parsed."""
    notice, = upstream.wait_messages(1)
    assert notice.mail_from == ""
    assert notice.rcpt_tos == [to]
    parsed = notice.parsed()
    assert parsed["Subject"] == "Undelivered Mail Returned to Sender"
    # (sender rewriting applies to it as to any local sender)
    assert parsed["From"].startswith("MAILER-DAEMON@")
    assert parsed.get_content_type() == "multipart/report"
    upstream.assert_count_stays(1, settle=1.0)
    return notice, parsed


def test_policy_refusal_of_a_dropped_file_is_returned_to_the_user(
        daemon_factory, upstream, postdrop_binary):
    """Postfix returns a postdrop'd message its cleanup rejects: a forged
    sender, refused by the sender policy, comes back to the user who
    dropped it (through their alias), never to the forged address."""
    require_root()
    user = ensure_user()
    daemon, binary = refusing_daemon(
        daemon_factory, upstream, postdrop_binary,
        f"{user.pw_name}: {user.pw_name}-inbox@example.net\n")
    sent = make_message("forged", "x\n", sender="ceo@company.example")
    done = postdrop(binary, daemon, sent, "ceo@company.example",
                    ["b@example.net", "c@example.net"], user=user)
    assert done.returncode == 0, done.stderr
    daemon.wait_log(r"maildrop: \S+ \(owner uid=%d\): refused at MAIL: 553 "
                    r"5\.7\.1 <ceo@company\.example>: sender not owned by "
                    r"user %s; returned to <%s>: 250 " % (
                        user.pw_uid, user.pw_name, user.pw_name))
    notice, parsed = returned_notice(upstream,
                                     f"{user.pw_name}-inbox@example.net")
    assert parsed["To"] == f"<{user.pw_name}@{HOSTNAME}>"
    report = notice.content.decode()
    for rcpt in ("b@example.net", "c@example.net"):
        assert f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\n" \
            f"Status: 5.7.1\r\n" in report, report
    assert "Diagnostic-Code: smtp; 553 5.7.1 <ceo@company.example>: " \
        "sender not owned by user" in report
    assert "Subject: forged" in report   # the original header section
    assert drop_files(daemon) == [] and corrupt_files(daemon) == []


def test_refused_recipient_returns_the_drop_for_all(daemon_factory, upstream,
                                                    postdrop_binary):
    """root's cron mail to a local name without an alias: the message
    goes to all of its recipients or to none, and comes back to root,
    who has no alias either: the address sender rewriting gives root
    (masquerading) takes it."""
    daemon = daemon_factory(upstream.port, mail_domain="example.org",
                            sender_rewrite={"masquerade": True})
    sent = make_message("cron", "output\n", sender=f"root@{HOSTNAME}")
    done = postdrop(postdrop_binary, daemon, sent, f"root@{HOSTNAME}",
                    ["nobody-here@localhost", "b@example.net"])
    assert done.returncode == 0, done.stderr
    daemon.wait_log(r"maildrop: \S+ \(owner uid=0\): refused at RCPT: 550 "
                    r"5\.1\.1 <nobody-here@localhost>: no such local user "
                    r"nobody-here"
                    r".*; returned to <root@example\.org>: 250 ")
    notice, _ = returned_notice(upstream, "root@example.org")
    report = notice.content.decode()
    assert "Final-Recipient: rfc822; nobody-here@localhost\r\nAction: failed\r\n" \
        "Status: 5.1.1\r\n" in report, report
    assert "<b@example.net>: not sent: a message goes to all of its " \
        "recipients or to none" in report
    assert drop_files(daemon) == [] and corrupt_files(daemon) == []


def test_refused_drop_nobody_can_take_is_moved_aside(
        daemon_factory, upstream, postdrop_binary):
    """No alias for the user and an address of a local domain: nobody
    can be told, so the file goes to corrupt/ with both reasons."""
    require_root()
    user = ensure_user()
    daemon, binary = refusing_daemon(daemon_factory, upstream,
                                     postdrop_binary, "postmaster: root\n")
    done = postdrop(binary, daemon, make_message("forged", "x\n"),
                    "ceo@company.example", ["b@example.net"], user=user)
    assert done.returncode == 0, done.stderr
    daemon.wait_log(r"maildrop: \S+ \(owner uid=%d\): refused at MAIL: 553 "
                    r"5\.7\.1 <ceo@company\.example>: sender not owned by "
                    r"user %s; cannot be returned: refused at RCPT: 550 "
                    r"5\.1\.1 <%s>: no such local user .*; moved to "
                    r"corrupt/" % (user.pw_uid, user.pw_name, user.pw_name))
    assert len(corrupt_files(daemon)) == 1
    upstream.assert_count_stays(0, settle=1.0)


USER_PROBE = r"""
import os, sys
queue, drop, dropped = sys.argv[1:4]
results = []
try:
    open(os.path.join(queue, "forged"), "wb").write(b"x")
    results.append("queue-writable")
except PermissionError:
    results.append("queue-denied")
try:
    os.listdir(drop)
    results.append("drop-listable")
except PermissionError:
    results.append("drop-unlistable")
try:
    open(os.path.join(drop, dropped), "rb").read()
    results.append("drop-readable")
except PermissionError:
    results.append("drop-unreadable")
try:
    os.unlink(os.path.join(drop, dropped))
    results.append("drop-removable")
except PermissionError:
    results.append("drop-unremovable")
print(" ".join(results))
"""


def test_unprivileged_user_cannot_touch_queue_or_others_drops(
        stopped_daemon, postdrop_binary):
    require_root()
    daemon = stopped_daemon
    user = ensure_user()
    done = postdrop(postdrop_binary, daemon, make_message("root's", "x\n"),
                    "root", ["b@example.net"])
    assert done.returncode == 0, done.stderr
    dropped = drop_files(daemon)[0]
    queue = os.path.join(daemon.workdir, "spool", "queue")
    probe = python_as(user, USER_PROBE, queue, maildrop_dir(daemon), dropped)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["queue-denied", "drop-unlistable",
                                    "drop-unreadable", "drop-unremovable"]
    assert drop_files(daemon) == [dropped]


def sendmail_as(who, daemon, postdrop_binary):
    """For root or an ordinary user: how to run a command as them, the
    postdrop sendmail must run for them (the setgid copy for the user),
    their uid and login."""
    if who == "user":
        require_root()
        user = ensure_user()
        bindir = os.path.join(daemon.workdir, "bin")
        os.mkdir(bindir, 0o755)
        postdrop_path = setgid_copy(postdrop_binary, bindir, ensure_group())
        return ((lambda *a, **k: as_user(user, *a, **k)), postdrop_path,
                user.pw_uid, user.pw_name)
    return subprocess.run, postdrop_binary, 0, "root"


@pytest.mark.parametrize("who", ["root", "user"])
def test_sendmail_falls_back_to_the_real_postdrop(
        stopped_daemon, upstream, postdrop_binary, sendmail_binary, who):
    """The whole path while the daemon is down: smarthost-sendmail finds
    no socket, runs smarthost-postdrop (the setgid copy for the user),
    the daemon imports the file at start and relays it with the uid."""
    daemon = stopped_daemon
    run, postdrop_path, uid, login = sendmail_as(who, daemon,
                                                 postdrop_binary)
    argv = ["env", f"SMARTHOST_POSTDROP={postdrop_path}", sendmail_binary,
            "-C", daemon.config_path, "-i", "b@example.net"]
    message = b"Subject: via sendmail\n\nwhile the daemon was down\n"
    done = run(argv, input=message, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert len(drop_files(daemon)) == 1
    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert got.mail_from == f"{login}@{HOSTNAME}"
    assert got.rcpt_tos == ["b@example.net"]
    parsed = got.parsed()
    assert parsed["Subject"] == "via sendmail"
    assert parsed["From"] and parsed["Message-ID"] and parsed["Date"]
    assert f"from userid {uid}" in parsed["Received"]
    daemon.wait_log(rf"client=localhost\[maildrop\], uid={uid}\b")
    assert drop_files(daemon) == []


@pytest.mark.parametrize("who", ["root", "user"])
def test_bs_while_stopped_goes_to_the_maildrop(
        stopped_daemon, upstream, postdrop_binary, sendmail_binary, who):
    """sendmail -bs with the daemon down holds the SMTP dialogue itself:
    swaks (as git send-email or Emacs's smtpmail would) hears 250 once
    postdrop has the message, which the daemon relays when it starts."""
    daemon = stopped_daemon
    run, postdrop_path, uid, _ = sendmail_as(who, daemon, postdrop_binary)
    token = os.urandom(6).hex()
    pipe = (f"env SMARTHOST_POSTDROP={postdrop_path} {sendmail_binary} "
            f"-C {daemon.config_path} -bs")
    done = run(["swaks", "--pipe", pipe, "--from", "s@example.org",
                "--to", "b@example.net,c@example.net", "--helo",
                "client.test", "--header", "Subject: -bs while stopped",
                "--body", f"..dot line\n{token}", "--timeout", "20"],
               capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"<-  220 \S+ ESMTP smarthost-sendmail: smarthostd is "
                     r"not running", done.stdout), done.stdout
    assert "<-  250 2.0.0 Ok: queued in the maildrop" in done.stdout
    assert "<-  221 2.0.0 Bye" in done.stdout
    assert len(drop_files(daemon)) == 1
    # A local recipient the daemon would refuse is refused at RCPT.
    refused = run(["swaks", "--pipe", pipe, "--from", "s@example.org",
                   "--to", "nobody-here@localhost", "--timeout", "20"],
                  capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "<** 550 5.1.1 <nobody-here@localhost>: no such local user" in \
        refused.stdout, refused.stdout
    assert len(drop_files(daemon)) == 1
    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert got.mail_from == "s@example.org"
    assert sorted(got.rcpt_tos) == ["b@example.net", "c@example.net"]
    assert got.parsed()["Subject"] == "-bs while stopped"
    # swaks stuffed the dot and the dialogue took it off again.
    assert f"\r\n..dot line\r\n{token}\r\n".encode() in got.content
    assert f"from userid {uid}" in got.parsed()["Received"]
    daemon.wait_log(rf"client=localhost\[maildrop\], uid={uid}\b")
    assert drop_files(daemon) == []
    upstream.assert_count_stays(1, settle=0.5)


def test_unprivileged_daemon_reads_drops_through_the_group(
        daemon_factory, upstream, pki, postdrop_binary):
    """A daemon that drops to its user keeps maildrop_group as a
    supplementary group: postdrop's files (0640, group maildrop_group,
    owned by their submitter) are readable by it and by nobody else, and
    the start-up chown of the spool leaves the maildrop's files alone."""
    require_root()
    user = ensure_user()
    group = ensure_group()
    nobody = pwd.getpwnam("nobody")
    daemon = daemon_factory(upstream.port, start=False, user="nobody",
                            maildrop_group=DROP_GROUP,
                            relays={"upstream": {"ca_file": "ca.pem"}})
    open_for_user(daemon.workdir)
    shutil.copyfile(pki.good.ca_cert, os.path.join(daemon.workdir, "ca.pem"))
    daemon.start()
    with open(f"/proc/{daemon.pid}/status", encoding="ascii") as f:
        groups = [line.split(":\t", 1)[1].split() for line in f
                  if line.startswith("Groups:")][0]
    assert str(group.gr_gid) in groups, groups
    assert daemon.terminate() == 0
    md = os.stat(maildrop_dir(daemon))
    assert (md.st_uid, md.st_gid) == (nobody.pw_uid, group.gr_gid)
    assert stat.S_IMODE(md.st_mode) == 0o1730

    bindir = os.path.join(daemon.workdir, "bin")
    os.mkdir(bindir, 0o755)
    binary = setgid_copy(postdrop_binary, bindir, group)
    sender = f"{user.pw_name}@{HOSTNAME}"
    sent = make_message("to a dropped daemon", "x\n", sender=sender)
    done = postdrop(binary, daemon, sent, sender, ["b@example.net"],
                    user=user)
    assert done.returncode == 0, done.stderr
    daemon.start()
    got = upstream.wait_messages(1)[0]
    assert_relayed(got, sent)
    assert f"from userid {user.pw_uid}" in got.parsed()["Received"]
    assert drop_files(daemon) == []
    assert corrupt_files(daemon) == []
