"""More authentication to the upstream (issue 3), checked from the
upstream's side: XOAUTH2 with a token from oauth_command, a relay's own
mechanism order, SIGHUP re-reading the credential settings, and
smarthostctl login on a real terminal (a pseudo-terminal).

The fixtures and helpers are test_auth.py's; see authharness.py for the
upstream, which records every command of every session.
"""

import base64
import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time

import pytest

from authharness import new_password
from test_auth import (
    LONG_BACKOFF, USER, assert_auth_before_mail, assert_no_secret,
    assert_no_secret_anywhere, data_sessions, save_credentials,
    start_daemon, submit, wait_deferred, wait_delivered)
from harness import (assert_relayed, merge_settings, render_config,
                     rewrite_config, scaled)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")

TOKEN = "tok-123"


# --------------------------------------------------------------------------
# XOAUTH2

def test_xoauth2_token_from_oauth_command(oauth_upstream_factory,
                                          daemon_factory, authinfo):
    """The relay runs oauth_command, sends its output as the Bearer token
    of XOAUTH2 with the relay's user, over STARTTLS, and the mail
    arrives; neither the token nor the XOAUTH2 blob is in the -d log."""
    upstream = oauth_upstream_factory({USER: TOKEN})
    # No credential file at all: the token alone must do.
    assert not os.path.exists(authinfo)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"], user=USER,
                          oauth_command=f"echo {TOKEN}")
    qid, message = submit(daemon, "xoauth2")
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)

    assert upstream.handler.oauth_seen == [(USER, f"Bearer {TOKEN}")], \
        upstream.handler.oauth_seen
    auths = upstream.auth_commands()
    assert [(c.mechanism, c.code, c.tls) for c in auths] == \
        [("XOAUTH2", 235, True)], upstream.describe()
    sessions = data_sessions(upstream)
    assert len(sessions) == 1, upstream.describe()
    assert_auth_before_mail(sessions[0], mechanism="XOAUTH2")

    log = daemon.log()
    assert re.search(r"AUTH XOAUTH2\b", log), \
        "no protocol trace of AUTH XOAUTH2 in the -d log"
    blob = f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()
    for form in (f"Bearer {TOKEN}", base64.b64encode(blob).decode(),
                 TOKEN.encode().hex()):
        assert form not in log, f"the -d log contains the token as {form!r}"
    # The token as a word of its own: only the oauth_command setting
    # itself ("echo tok-123") could name it, and the log must not show
    # even that.
    assert not re.search(rf"(?<!echo ){re.escape(TOKEN)}", log), \
        "the -d log contains the OAuth token"


def test_oauthbearer_leaves_no_secret(oauth_upstream_factory, ctl,
                                      daemon_factory, authinfo):
    """OAUTHBEARER (RFC 7628) with the token from oauth_command: the mail
    arrives, and the token is in no form in the -d log (whose trace shows
    the exchange), the spool and state files, or smarthostctl's output,
    also after a second message and a deferral."""
    token = new_password("tok")
    upstream = oauth_upstream_factory({USER: token},
                                      mechanisms=("OAUTHBEARER",))
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"], user=USER,
                          oauth_command=f"echo {token}")
    qid, message = submit(daemon, "oauthbearer")
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    assert upstream.handler.oauth_seen == [(USER, f"Bearer {token}")]
    assert re.search(r"AUTH OAUTHBEARER\b", daemon.log()), \
        "no protocol trace of AUTH OAUTHBEARER in the -d log"
    assert_no_secret_anywhere(ctl, daemon, (USER, token),
                              port=upstream.port)


def test_scram_leaves_no_secret(oauth_upstream_factory, ctl, daemon_factory,
                                authinfo, password):
    """SCRAM-SHA-256 against a server that checks the proof and proves
    itself: the mail arrives, the exchange is in the -d trace, and neither
    the password nor what SCRAM derives from it (salted password, client,
    stored and server keys) is in any form in the log, spool, state files
    or smarthostctl's output."""
    upstream = oauth_upstream_factory({}, mechanisms=("SCRAM-SHA-256",))
    upstream.handler.users[USER] = password
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, message = submit(daemon, "scram")
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    assert [(c.mechanism, c.code) for c in upstream.auth_commands()] == \
        [("SCRAM-SHA-256", 235)], upstream.describe()
    assert re.search(r"AUTH SCRAM-SHA-256\b", daemon.log()), \
        "no protocol trace of AUTH SCRAM-SHA-256 in the -d log"
    assert len(upstream.handler.scram_keys) == 4
    assert_no_secret_anywhere(ctl, daemon, (USER, password),
                              port=upstream.port,
                              keys=upstream.handler.scram_keys)


# --------------------------------------------------------------------------
# Mechanism order per relay

def test_relay_mechanisms_order_overrides_cram_md5(auth_upstream_factory,
                                                   daemon_factory, authinfo,
                                                   password):
    """The server offers CRAM-MD5, PLAIN and LOGIN; by default CRAM-MD5
    would be chosen (test_auth.py), but mechanisms = ["LOGIN", "PLAIN"]
    makes the relay use LOGIN and never try CRAM-MD5."""
    upstream = auth_upstream_factory({USER: password})
    assert set(upstream.offered) == {"CRAM-MD5", "PLAIN", "LOGIN"}
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          mechanisms=["LOGIN", "PLAIN"])
    qid, message = submit(daemon, "login first")
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    assert [(c.mechanism, c.code, c.tls)
            for c in upstream.auth_commands()] == [("LOGIN", 235, True)], \
        upstream.describe()
    assert [a[0] for a in upstream.handler.attempts] == ["LOGIN"], \
        upstream.handler.attempts
    assert_auth_before_mail(data_sessions(upstream)[0], mechanism="LOGIN")
    daemon.wait_log(rf"authenticated as {re.escape(USER)} with LOGIN")
    assert_no_secret(daemon.log(), (USER, password))


# --------------------------------------------------------------------------
# SIGHUP re-reads the credential settings

@pytest.mark.parametrize("how", ["authinfo-list", "password_command"])
def test_sighup_rereads_credentials(auth_upstream_factory, daemon_factory,
                                    authinfo, password, tmp_path, how):
    """What this proves: after SIGHUP the daemon uses the credentials the
    new config points at, and retries the deferred mail at once, long
    before the 10-minute backoff ends.

    It does not edit a watched file: the daemon's cache compares inode,
    size, mtime and ctime, and the ctime of a rewritten file cannot be put
    back, so the 5 s poll would notice any edit by itself and the test
    could not tell the poll from the HUP. Instead the changed credentials
    are reachable only through the config: a second authinfo file (with
    the right password, written before the daemon starts and never
    touched) that only the new config lists, or a new password_command
    (whose output the daemon never watches). Nothing but the reload can
    bring the mail out within the test."""
    upstream = auth_upstream_factory({USER: password})
    wrong = new_password("wrong")
    right_file = str(tmp_path / "authinfo-right")
    save_credentials(authinfo, upstream, wrong)
    relay = {}
    if how == "authinfo-list":
        save_credentials(right_file, upstream, password)
    else:
        (tmp_path / "wrong").write_text(wrong + "\n")
        (tmp_path / "right").write_text(password + "\n")
        relay = {"user": USER,
                 "password_command": f"cat {tmp_path / 'wrong'}"}
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          settings=LONG_BACKOFF, **relay)
    qid, message = submit(daemon, f"hup {how}")
    wait_deferred(daemon, qid)
    daemon.wait_log(r"authentication to 127\.0\.0\.1:\d+ failed")
    assert upstream.messages == []

    # Past one poll of the credential files: still nothing moves.
    time.sleep(6)
    assert upstream.messages == [], upstream.describe()
    assert not daemon.log_lines(rf"{qid}: .*status=sent")

    if how == "authinfo-list":
        new = {"authinfo": [right_file]}
    else:
        new = {"relays": {"upstream": {
            "password_command": f"cat {tmp_path / 'right'}"}}}
    rewrite_config(daemon, render_config(merge_settings(daemon.settings,
                                                        new)))
    since = os.path.getsize(daemon.log_path)
    t0 = time.monotonic()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b", since=since)
    relayed = wait_delivered(daemon, upstream, qid, timeout=10)
    assert time.monotonic() - t0 < scaled(10)
    assert_relayed(relayed[0], message)
    assert_auth_before_mail(data_sessions(upstream)[0])
    assert_no_secret(daemon.log(), (USER, wrong), (USER, password))


# --------------------------------------------------------------------------
# smarthostctl login on a terminal

class Terminal:
    """A process on a fresh pseudo-terminal that is its controlling
    terminal (so /dev/tty is the pty), and everything it wrote."""

    def __init__(self, argv, timeout=30):
        self.master, slave = pty.openpty()

        def become_controlling():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=become_controlling,
                close_fds=True)
        finally:
            os.close(slave)
        self.output = b""
        self.deadline = time.monotonic() + timeout

    def _read(self, timeout):
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:          # EIO: the slave side is closed
            return False
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern):
        """Reads until pattern (bytes regex) matches the output after
        what earlier expects consumed."""
        __tracebackhide__ = True
        regex = re.compile(pattern)
        while not regex.search(self.output):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not self._read(min(remaining, 0.2)) and \
                    not regex.search(self.output):
                raise AssertionError(
                    f"no /{pattern!r}/ on the terminal; got "
                    f"{self.output!r}")

    def echo_on(self):
        return bool(termios.tcgetattr(self.master)[3] & termios.ECHO)

    def wait_echo(self, on):
        __tracebackhide__ = True
        while self.echo_on() != on:
            if time.monotonic() >= self.deadline:
                raise AssertionError(f"terminal echo never turned "
                                     f"{'on' if on else 'off'}")
            time.sleep(0.01)

    def type(self, text):
        os.write(self.master, text.encode())

    def finish(self):
        """Reads to the end; returns the exit status."""
        while self._read(0.2):
            if time.monotonic() >= self.deadline:
                break
            if self.proc.poll() is not None and not select.select(
                    [self.master], [], [], 0)[0]:
                break
        try:
            return self.proc.wait(max(self.deadline - time.monotonic(), 1))
        finally:
            self.close()

    def close(self):
        """Idempotent: a second os.close() of the same number could close
        a descriptor opened since by another thread (the upstream's
        connection, say)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.master is None:
            return
        try:
            os.close(self.master)
        except OSError:
            pass
        self.master = None


def test_login_on_terminal_hides_password(ctl, auth_upstream_factory,
                                          daemon_factory, authinfo,
                                          password):
    """smarthostctl login with its standard input a terminal: the prompts
    come on the terminal, the user's answer is echoed, the password's is
    not (the terminal's echo is off while it is typed and back on after),
    login succeeds with CRAM-MD5, saves, and the deferred mail leaves."""
    upstream = auth_upstream_factory({USER: password})
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          settings=LONG_BACKOFF)
    qid, message = submit(daemon)
    wait_deferred(daemon, qid)

    term = Terminal([ctl, "-c", daemon.config_path, "login",
                     f"127.0.0.1:{upstream.port}"])
    try:
        assert term.echo_on()
        term.expect(rb"User for 127\.0\.0\.1: ")
        term.type(USER + "\n")
        term.expect(rb"Password for " + re.escape(USER.encode())
                    + rb"@127\.0\.0\.1: ")
        # Type only once the echo is off, as a person would (the prompt
        # is written just before the echo is turned off).
        term.wait_echo(False)
        term.type(password + "\n")
        term.expect(rb"authenticated with CRAM-MD5")
        term.expect(rb"Save to .*\? \[y/N\] ")
        assert term.echo_on(), "echo still off after the password"
        term.type("y\n")
        status = term.finish()
    finally:
        term.close()
    out = term.output.decode("utf-8", "replace")
    assert status == 0, out
    # The control: what is typed with echo on does come back.
    assert re.search(rf"User for 127\.0\.0\.1: {re.escape(USER)}\r?\n", out), \
        out
    assert f"saved to {authinfo}, line 1" in out, out
    assert_no_secret(out, (USER, password), where="the terminal")

    relayed = wait_delivered(daemon, upstream, qid, timeout=10)
    assert_relayed(relayed[0], message)
