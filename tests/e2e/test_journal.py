"""Structured journal entries: with its stderr connected to journald (and
JOURNAL_STREAM naming that stream, as systemd sets it), the daemon sends
each log line through sd_journal_sendv with QUEUE_ID=, RELAY=, STATUS=
and DSN=, so `journalctl QUEUE_ID=...` shows a message's history.

A real systemd-journald runs for the test in a private mount namespace
(unshare -m, as root): tmpfs over /run/systemd/journal for its sockets,
the test's directory bound on /run/log/journal for its files, which
journalctl --directory then reads from outside, and a journald.conf of
the test's (volatile storage) over the host's. The daemon runs in that
namespace under systemd-cat, which connects its stdout and stderr to the
journal's stream socket.
"""

import json
import os
import re
import signal
import subprocess

import pytest

from authharness import (AuthUpstream, authinfo_line, new_password,
                         secret_forms, write_authinfo)
from harness import (daemon_spawn, delivery_line, free_port, make_message,
                     send_message, wait_until)

JOURNALD = "/lib/systemd/systemd-journald"
GOOD, BAD, SLOW = "good@example.net", "bad@example.net", "slow@example.net"

# Runs in the new mount namespace: $1 the journal directory, $2 where to
# write journald's pid, then the daemon's command line. The daemon ends up
# as this very process (exec), so its pid is the one the test started.
NAMESPACE_SCRIPT = r"""
set -eu
jdir=$1 pidfile=$2
shift 2
mkdir -p /run/systemd/journal /run/log/journal
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/journal
mount --bind "$jdir" /run/log/journal
if [ -d /var/log/journal ]; then
	mount -t tmpfs tmpfs /var/log/journal
fi
# The host's journald.conf might say Storage=none or persistent: this one
# keeps the entries in /run/log/journal, unthrottled.
printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' >"$jdir.conf"
if [ -f /etc/systemd/journald.conf ]; then
	mount --bind "$jdir.conf" /etc/systemd/journald.conf
fi
if [ -d /etc/systemd/journald.conf.d ]; then
	mount -t tmpfs tmpfs /etc/systemd/journald.conf.d
fi
"$JOURNALD" </dev/null >"$jdir/journald.out" 2>&1 &
echo $! >"$pidfile"
i=0
while [ ! -S /run/systemd/journal/stdout ] ||
    [ ! -S /run/systemd/journal/socket ]; do
	i=$((i + 1))
	[ "$i" -lt 200 ] || { echo "journald did not start" >&2; exit 70; }
	sleep 0.05
done
# systemd-cat connects stdout and stderr to the journal's stream; systemd
# itself would also set JOURNAL_STREAM to that socket's device:inode.
exec systemd-cat -t smarthostd-stream sh -c \
    'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); \
     export JOURNAL_STREAM; exec "$@"' sh "$@"
"""


def journal(jdir, *matches):
    """The entries journalctl reads from jdir, as dicts, oldest first."""
    done = subprocess.run(
        ["journalctl", "--directory", jdir, "-o", "json", "--no-pager",
         "--all", *matches],
        capture_output=True, text=True, timeout=30)
    if "No journal files were found" in done.stderr:
        return []
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line]


def start_in_journal(request, tmp_path, daemon_factory, relay_port,
                     **overrides):
    """(daemon, journal directory): a daemon logging to a real journald
    in a mount namespace of its own, both stopped when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts in a private namespace")
    jdir = str(tmp_path / "journal")
    os.mkdir(jdir)
    pidfile = str(tmp_path / "journald.pid")
    port = free_port()
    daemon = daemon_factory(relay_port, start=False,
                            listen=[{"address": "127.0.0.1",
                                     "port": str(port)}], **overrides)
    daemon.port = port
    env = dict(os.environ, JOURNALD=JOURNALD)
    env.pop("JOURNAL_STREAM", None)

    def stop():
        status = daemon.terminate() if daemon.running() else 0
        if os.path.exists(pidfile):
            with open(pidfile, encoding="ascii") as f:
                pid = int(f.read())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # The namespace's shell execs the daemon: a crash at shutdown
        # shows here.
        assert status == 0, f"smarthostd exited with {status} after SIGTERM"

    request.addfinalizer(stop)
    daemon_spawn(daemon, prefix=["unshare", "--mount",
                                 "--propagation", "private", "--",
                                 "sh", "-c", NAMESPACE_SCRIPT, "sh", jdir,
                                 pidfile],
                 env=env)

    def why():
        path = os.path.join(jdir, "journald.out")
        out = open(path, encoding="utf-8").read() \
            if os.path.exists(path) else ""
        return (f"the daemon's start in the journal; its stderr: "
                f"{daemon.log()!r}; journald: {out!r}")

    started = wait_until(
        lambda: [e for e in journal(jdir, "SYSLOG_IDENTIFIER=smarthostd")
                 if e["MESSAGE"].startswith("started, pid=")], 20, why)
    assert started[0]["MESSAGE"] == f"started, pid={daemon.pid}"
    return daemon, jdir


@pytest.fixture
def journald_daemon(request, tmp_path, daemon_factory, upstream_factory):
    """(daemon, upstream, journal directory), the upstream bouncing BAD
    and deferring SLOW."""
    upstream = upstream_factory(
        rcpt_replies={BAD: "550 5.1.1 no such user \x1b[31mred",
                      SLOW: "451 4.3.0 mailbox busy, try later"})
    daemon, jdir = start_in_journal(request, tmp_path, daemon_factory,
                                    upstream.port)
    return daemon, upstream, jdir


def by_status(entries, rcpt, status):
    return [e for e in entries if e.get("STATUS") == status
            and f"to=<{rcpt}>" in e["MESSAGE"]]


def test_journal_entries_carry_the_message_fields(journald_daemon):
    daemon, upstream, jdir = journald_daemon
    qid = send_message(daemon, make_message("mix", "Three ways.\n"),
                       recipients=(GOOD, BAD, SLOW))

    def deferred():
        return by_status(journal(jdir, f"QUEUE_ID={qid}"), SLOW,
                         "deferred")

    wait_until(deferred, 20, "the deferral in the journal")
    del upstream.handler.rcpt_replies[SLOW]
    daemon.flush()
    wait_until(lambda: any(e["MESSAGE"] == f"{qid}: removed"
                           for e in journal(jdir, f"QUEUE_ID={qid}")), 20,
               "the message's removal in the journal")

    history = journal(jdir, f"QUEUE_ID={qid}")
    relay = f"127.0.0.1[127.0.0.1]:{upstream.port}"
    for entry in history:
        # The native protocol, not the stream: sd_journal_sendv sent it.
        assert entry["_TRANSPORT"] == "journal", entry
        assert entry["SYSLOG_IDENTIFIER"] == "smarthostd"
        assert entry["_PID"] == str(daemon.pid)
        assert entry["MESSAGE"].startswith(f"{qid}: ")
    messages = [e["MESSAGE"] for e in history]
    assert any(re.match(rf"{qid}: from=<a@example\.org>, size=\d+, "
                        r"nrcpt=3 \(queued\)$", m) for m in messages), \
        messages
    assert f"{qid}: removed" in messages

    sent = by_status(history, GOOD, "sent")
    assert len(sent) == 1, messages
    assert sent[0]["RELAY"] == relay
    assert sent[0]["DSN"] == "2.0.0"
    assert sent[0]["PRIORITY"] == "6"
    assert re.search(delivery_line(qid, GOOD, "sent"), sent[0]["MESSAGE"])

    bounced = by_status(history, BAD, "bounced")
    assert len(bounced) == 1, messages
    assert bounced[0]["RELAY"] == relay
    assert bounced[0]["DSN"] == "5.1.1"
    # The upstream's escape byte never reaches the journal raw.
    assert "no such user" in bounced[0]["MESSAGE"]
    assert not [e for e in history if any(
        ch < " " for value in e.values() if isinstance(value, str)
        for ch in value)]

    deferrals = by_status(history, SLOW, "deferred")
    assert deferrals and all(e["DSN"] == "4.3.0" and e["RELAY"] == relay
                             for e in deferrals)
    assert len(by_status(history, SLOW, "sent")) == 1

    # The bounce's own notification has a history of its own.
    notice = [m for m in messages
              if "sender non-delivery notification: " in m]
    assert len(notice) == 1, messages
    dsn_id = notice[0].rsplit(" ", 1)[1]
    wait_until(lambda: by_status(journal(jdir, f"QUEUE_ID={dsn_id}"),
                                 "a@example.org", "sent"), 20,
               "the notification's delivery in the journal")

    # Lines about no message have no QUEUE_ID, and nothing came through
    # the stream (stderr) while the journal took entries.
    assert [e for e in journal(jdir, "SYSLOG_IDENTIFIER=smarthostd")
            if "QUEUE_ID" not in e and e["MESSAGE"].startswith("listening")]
    assert journal(jdir, "SYSLOG_IDENTIFIER=smarthostd-stream") == []

    assert daemon.terminate() == 0
    stops = [e for e in journal(jdir, "SYSLOG_IDENTIFIER=smarthostd")
             if e["MESSAGE"] == "stopped"]
    assert len(stops) == 1 and stops[0]["PRIORITY"] == "6"


def test_other_stderr_keeps_plain_lines(upstream, daemon_factory):
    """JOURNAL_STREAM that names another file (a parent's journal stream,
    inherited) leaves today's lines on stderr."""
    daemon = daemon_factory(upstream.port, env={"JOURNAL_STREAM": "1:1"})
    qid = send_message(daemon, make_message("plain", "Plain lines.\n"))
    daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))
    assert re.search(r"^<6>started, pid=\d+$", daemon.log(), re.MULTILINE)
    assert re.search(rf"^<6>{qid}: to=<b@example\.net>, relay=", daemon.log(),
                     re.MULTILINE)


@pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_no_secret_reaches_the_journal(request, tmp_path, daemon_factory,
                                       pki):
    """AUTH with a password (PLAIN, then LOGIN after a rejection) and
    debug traces on: no form of it is in any journal entry."""
    user, password, wrong = "me@example.com", new_password(), new_password()
    upstream = AuthUpstream({user: password}, tls=pki.good,
                            mechanisms=("PLAIN", "LOGIN"))
    upstream.start(may_move=True)
    request.addfinalizer(upstream.stop)
    authinfo = str(tmp_path / "authinfo")
    write_authinfo(authinfo, authinfo_line("127.0.0.1", upstream.port, user,
                                           wrong))
    daemon, jdir = start_in_journal(
        request, tmp_path, daemon_factory, upstream.port,
        authinfo=[authinfo], auth_first=[r"^127\.0\.0\.1$"],
        relays={"upstream": {"mechanisms": ["LOGIN"]}})
    qid = send_message(daemon, make_message("auth", "Authenticated.\n"))
    wait_until(lambda: by_status(journal(jdir, f"QUEUE_ID={qid}"),
                                 "b@example.net", "deferred"), 20,
               "the deferral for rejected credentials")
    write_authinfo(authinfo, authinfo_line("127.0.0.1", upstream.port, user,
                                           password))
    wait_until(lambda: by_status(journal(jdir, f"QUEUE_ID={qid}"),
                                 "b@example.net", "sent"), 30,
               "the delivery with the right password")
    export = subprocess.run(
        ["journalctl", "--directory", jdir, "-o", "export", "--no-pager"],
        capture_output=True, timeout=30).stdout.decode("latin-1")
    assert "SYSLOG_IDENTIFIER=smarthostd" in export
    assert "AUTH LOGIN" in export, "no AUTH traced: nothing was tested"
    for form in secret_forms(user, password) + secret_forms(user, wrong):
        assert form not in export, f"the journal has the password ({form})"
