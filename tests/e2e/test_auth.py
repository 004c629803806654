"""Authentication to the upstream (issue 3), checked from the upstream's
side: an aiosmtpd server that requires AUTH, with CRAM-MD5 (implemented in
authharness.py), PLAIN and LOGIN, records every command of every session.

Credentials come from an authinfo file in the test's directory, named in
the config (authinfo = [ ... ]) so that no test reads the home directory.
"""

import json
import os
import re
import stat

import pytest

from authharness import (authinfo_line, ctl_fields, key_forms, new_password,
                         run_ctl, secret_forms, write_authinfo)
from harness import (assert_relayed, delivery_line, make_message,
                     send_message)
from test_observe import ctl_metrics, samples_of

USER = "me@example.com"
RCPT = "b@example.net"
DELIVERY_TIMEOUT = 15
# Fixing a credential file must deliver the deferred mail without a
# restart or a signal, and at once: not at the end of the backoff.
FIX_TIMEOUT = 20
# A backoff that no test outlives: mail deferred under it can only leave
# within the test when the daemon notices new credentials.
LONG_BACKOFF = {"queue": {"retry_min": "10m", "retry_max": "1h"}}

pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")


# --------------------------------------------------------------------------
# Fixtures

def start_daemon(daemon_factory, upstream, authinfo_path, auth_first=None,
                 start=True, settings=None, **relay):
    """A daemon relaying to upstream with authinfo_path as its only
    credential file; relay settings are merged into the relay, settings
    (a dict) into the top level."""
    overrides = dict(settings or {})
    overrides.update({"authinfo": [authinfo_path],
                      "relays": {"upstream": relay}})
    if auth_first is not None:
        overrides["auth_first"] = auth_first
    return daemon_factory(upstream.port, start=start, **overrides)


def save_credentials(path, upstream, password, login=USER, host="127.0.0.1",
                     **extra):
    return write_authinfo(path, authinfo_line(host, upstream.port, login,
                                              password, **extra))


def submit(daemon, subject="auth test"):
    message = make_message(subject, f"Body of {subject}.\n")
    return send_message(daemon, message), message


def wait_delivered(daemon, upstream, qid, count=1,
                   timeout=DELIVERY_TIMEOUT):
    """Waits for qid's status=sent line and count messages upstream."""
    daemon.wait_log(delivery_line(qid, RCPT, "sent"), timeout=timeout)
    return upstream.wait_messages(count, timeout=5)


def wait_deferred(daemon, qid, timeout=10):
    return daemon.wait_log(delivery_line(qid, RCPT, "deferred") + r".*$",
                           timeout=timeout)


def assert_still_queued(ctl, daemon, upstream, qid):
    """Nothing reached the upstream, qid was neither sent nor bounced, and
    smarthostctl queue still lists it."""
    assert upstream.messages == [], upstream.describe()
    assert not daemon.log_lines(rf"{qid}: .*status=(sent|bounced|expired)")
    queue = run_ctl(ctl, daemon.config_path, "queue")
    assert queue.returncode == 0, queue.stderr
    assert re.search(rf"^{qid} ", queue.stdout, re.M), queue.stdout


def data_sessions(upstream):
    """The sessions in which a message was accepted (DATA ... 250)."""
    return [s for s in upstream.sessions
            if any(c.verb == "DATA" and c.code == 250 for c in s.commands)]


def assert_auth_before_mail(session, mechanism=None):
    """In session, a successful AUTH (after STARTTLS) came before the
    first MAIL, and no MAIL was refused."""
    commands = session.commands
    i_auth = next((i for i, c in enumerate(commands)
                   if c.verb == "AUTH" and c.code == 235), None)
    i_mail = session.index("MAIL")
    assert i_auth is not None, f"no successful AUTH: {session.describe()}"
    assert i_mail is not None and i_auth < i_mail, \
        f"AUTH not before the first MAIL: {session.describe()}"
    assert commands[i_auth].tls, "AUTH before STARTTLS"
    assert all(c.code == 250 for c in commands if c.verb == "MAIL"), \
        session.describe()
    if mechanism is not None:
        assert commands[i_auth].mechanism == mechanism, session.describe()


def assert_auth_on_demand(session):
    """In session, MAIL was sent first and refused with 530, then AUTH
    succeeded and MAIL was accepted: all in this one session."""
    commands = session.commands
    first_mail = session.index("MAIL")
    assert first_mail is not None, session.describe()
    assert commands[first_mail].code == 530, \
        f"first MAIL not refused with 530: {session.describe()}"
    assert not any(c.verb == "AUTH" for c in commands[:first_mail]), \
        f"AUTH before the first MAIL: {session.describe()}"
    i_auth = next((i for i, c in enumerate(commands)
                   if c.verb == "AUTH" and c.code == 235), None)
    assert i_auth is not None and i_auth > first_mail, \
        f"no successful AUTH after the 530: {session.describe()}"
    later = session.index("MAIL", i_auth)
    assert later is not None and commands[later].code == 250, \
        f"MAIL not sent again after AUTH: {session.describe()}"


def assert_no_secret(text, *credentials, where="the daemon's log",
                     keys=()):
    """No form of any (user, password) in credentials, nor of any binary
    secret in keys (see key_forms), occurs in text."""
    for user, password in credentials:
        for form in secret_forms(user, password):
            assert form not in text, \
                f"{where} contains the password (as {form!r})"
    for form in key_forms(keys):
        assert form not in text, f"{where} contains a derived key ({form})"


def assert_no_secret_anywhere(ctl, daemon, *credentials, host="127.0.0.1",
                              port=None, keys=()):
    """No form of any credential (or of keys, binary secrets derived from
    one) in the daemon's log, in any file it keeps (spool, queue and state
    files; not the config, which may name an oauth_command), or in what
    smarthostctl's queue, status and credentials commands print."""
    assert_no_secret(daemon.log(), *credentials, keys=keys)
    skip = {os.path.realpath(daemon.config_path),
            os.path.realpath(daemon.log_path)}
    scanned = 0
    for top, _, files in os.walk(daemon.workdir):
        for name in files:
            path = os.path.realpath(os.path.join(top, name))
            if path in skip or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                text = f.read().decode("latin-1")
            assert_no_secret(text, *credentials, where=path, keys=keys)
            scanned += 1
    assert scanned > 0, "no spool or state file to scan"
    commands = [("queue",), ("status",)]
    if port is not None:
        commands.append(("credentials", host, str(port)))
    for args in commands:
        out = run_ctl(ctl, daemon.config_path, *args)
        assert_no_secret(out.stdout + out.stderr, *credentials,
                         where=f"smarthostctl {' '.join(args)}", keys=keys)


def status_auth_required(ctl, daemon):
    status = run_ctl(ctl, daemon.config_path, "status")
    assert status.returncode == 0, status.stderr
    return ctl_fields(status.stdout).get("auth-required", [])


# --------------------------------------------------------------------------
# When to authenticate

@pytest.mark.parametrize("host, auth_first, policy", [
    ("127.0.0.1", [r"^127\.0\.0\.1$"], None),
    ("localhost", ["^nomatch\\.example$", "^LocalHost$"], None),
    ("127.0.0.1", None, "always"),
], ids=["auth_first-address", "auth_first-name-ignorecase", "auth-always"])
def test_authenticates_before_first_mail(auth_upstream_factory,
                                         daemon_factory, authinfo, password,
                                         host, auth_first, policy):
    upstream = auth_upstream_factory({USER: password})
    # A name in the file in other case: host names compare without case.
    save_credentials(authinfo, upstream, password, host=host.upper())
    relay = {"host": host}
    if policy:
        relay["auth"] = policy
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=auth_first, **relay)
    qid, message = submit(daemon)
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    sessions = data_sessions(upstream)
    assert len(sessions) == 1, upstream.describe()
    assert_auth_before_mail(sessions[0], mechanism="CRAM-MD5")
    assert not any(c.code == 530 for c in upstream.mail_commands_seen()), \
        upstream.describe()
    daemon.wait_log(rf"authenticated as {re.escape(USER)} with CRAM-MD5")


def test_on_demand_then_learned_then_forgotten(ctl, auth_upstream_factory,
                                               daemon_factory, authinfo,
                                               password):
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password)
    # One message per connection, so that every message has a session of
    # its own to look at.
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^nomatch\.example$"],
                          max_messages_per_connection=1)
    hostport = f"127.0.0.1:{upstream.port}"
    assert status_auth_required(ctl, daemon) == ["none"]

    # 1: MAIL first, 530, AUTH and MAIL again in the same session.
    qid, message = submit(daemon, "first")
    relayed = wait_delivered(daemon, upstream, qid, 1)
    assert_relayed(relayed[0], message)
    sessions = data_sessions(upstream)
    assert len(sessions) == 1, upstream.describe()
    assert_auth_on_demand(sessions[0])
    daemon.wait_log(rf"relay {re.escape(hostport)} requires authentication;"
                    r" will authenticate first")
    assert status_auth_required(ctl, daemon) == [hostport]

    # 2: learned: AUTH before MAIL.
    qid, message = submit(daemon, "second")
    relayed = wait_delivered(daemon, upstream, qid, 2)
    assert_relayed(relayed[1], message)
    sessions = data_sessions(upstream)
    assert len(sessions) == 2, upstream.describe()
    assert_auth_before_mail(sessions[1])

    # Forget it: the status says so and the next message goes without
    # AUTH first again.
    forget = run_ctl(ctl, daemon.config_path, "auth-forget", "127.0.0.1")
    assert forget.returncode == 0, forget.stderr
    assert status_auth_required(ctl, daemon) == ["none"]
    qid, message = submit(daemon, "third")
    relayed = wait_delivered(daemon, upstream, qid, 3)
    assert_relayed(relayed[2], message)
    sessions = data_sessions(upstream)
    assert len(sessions) == 3, upstream.describe()
    assert_auth_on_demand(sessions[2])

    unknown = run_ctl(ctl, daemon.config_path, "auth-forget",
                      "nosuch.example")
    assert unknown.returncode == 65, (unknown.returncode, unknown.stdout,
                                      unknown.stderr)


def test_learned_survives_restart(ctl, auth_upstream_factory, daemon_factory,
                                  authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo)
    qid, _ = submit(daemon, "before restart")
    wait_delivered(daemon, upstream, qid, 1)
    assert_auth_on_demand(data_sessions(upstream)[0])
    daemon.wait_log(r"requires authentication; will authenticate first")
    assert daemon.terminate() == 0
    daemon.start()
    assert status_auth_required(ctl, daemon) == \
        [f"127.0.0.1:{upstream.port}"]
    qid, _ = submit(daemon, "after restart")
    wait_delivered(daemon, upstream, qid, 2)
    sessions = data_sessions(upstream)
    assert len(sessions) == 2, upstream.describe()
    assert_auth_before_mail(sessions[1])


def test_rcpt_refusal_while_auth_offered_triggers_auth(auth_upstream_factory,
                                                       daemon_factory,
                                                       authinfo, password):
    """A server that takes MAIL but refuses relaying (554 5.7.1 to RCPT)
    until authenticated: AUTH and the transaction again, same session."""
    upstream = auth_upstream_factory(
        {USER: password}, required=False,
        rcpt_unauthenticated="554 5.7.1 Relay access denied")
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo)
    qid, message = submit(daemon)
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    sessions = data_sessions(upstream)
    assert len(sessions) == 1, upstream.describe()
    commands = sessions[0].commands
    first_rcpt = sessions[0].index("RCPT")
    assert commands[first_rcpt].code == 554, sessions[0].describe()
    i_auth = next(i for i, c in enumerate(commands) if c.verb == "AUTH")
    assert i_auth > first_rcpt and commands[i_auth].code == 235, \
        sessions[0].describe()
    assert sessions[0].index("MAIL", i_auth) is not None, \
        sessions[0].describe()
    daemon.wait_log(r"requires authentication; will authenticate first")


def test_hangup_after_530_retries_at_once_with_auth(auth_upstream_factory,
                                                    daemon_factory, authinfo,
                                                    password):
    """A server that answers MAIL with 530 and hangs up: the relay learns
    that it requires AUTH and the mail goes again at once, authenticating
    first, not after retry_min (ten minutes here)."""
    upstream = auth_upstream_factory({USER: password}, hangup_after_530=1)
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^nomatch\.example$"],
                          settings=LONG_BACKOFF)
    qid, message = submit(daemon, "hangup")
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    sessions = [s for s in upstream.sessions if s.index("MAIL") is not None]
    assert len(sessions) == 2, upstream.describe()
    first, second = sessions
    assert [c.code for c in first.commands if c.verb == "MAIL"] == [530], \
        upstream.describe()
    assert first.auths() == [], upstream.describe()
    assert_auth_before_mail(second)
    daemon.wait_log(rf"{qid}: retrying at once with authentication first")
    assert not daemon.log_lines(r"no new session for"), \
        "the relay was backed off"


def test_auth_never_sends_no_credentials(ctl, auth_upstream_factory,
                                         daemon_factory, authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\."], auth="never")
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    assert upstream.auth_commands() == [], upstream.describe()
    daemon.wait_log(r'auth = "never"')
    assert_still_queued(ctl, daemon, upstream, qid)


# --------------------------------------------------------------------------
# Mechanisms

def test_cram_md5_chosen_when_offered(auth_upstream_factory, daemon_factory,
                                      authinfo, password):
    upstream = auth_upstream_factory({USER: password},
                                     mechanisms=("PLAIN", "LOGIN",
                                                 "CRAM-MD5"))
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_delivered(daemon, upstream, qid)
    auths = upstream.auth_commands()
    assert [(c.mechanism, c.code) for c in auths] == [("CRAM-MD5", 235)], \
        upstream.describe()
    assert upstream.handler.attempts == [("CRAM-MD5", USER, True)]


@pytest.mark.parametrize("rejected, expected", [
    (("CRAM-MD5",), [("CRAM-MD5", 535), ("PLAIN", 235)]),
    (("CRAM-MD5", "PLAIN"), [("CRAM-MD5", 535), ("PLAIN", 535),
                             ("LOGIN", 235)]),
], ids=["cram-md5-rejected", "cram-md5-and-plain-rejected"])
def test_next_mechanism_after_rejection(auth_upstream_factory, daemon_factory,
                                        authinfo, password, rejected,
                                        expected):
    upstream = auth_upstream_factory(
        {USER: password},
        reject={m: "535 5.7.8 Authentication credentials invalid"
                for m in rejected})
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_delivered(daemon, upstream, qid)
    sessions = data_sessions(upstream)
    assert len(sessions) == 1, upstream.describe()
    assert [(c.mechanism, c.code) for c in sessions[0].auths()] == expected, \
        upstream.describe()
    assert_auth_before_mail(sessions[0], mechanism=expected[-1][0])
    daemon.wait_log(rf"authenticated as {re.escape(USER)} with "
                    rf"{expected[-1][0]}")


def test_temporary_auth_failure_defers(ctl, auth_upstream_factory,
                                       daemon_factory, authinfo, password):
    """A 4xx to AUTH is temporary: the mail waits and no other mechanism
    is tried in that session."""
    upstream = auth_upstream_factory(
        {USER: password},
        reject={"CRAM-MD5": "454 4.7.0 Temporary authentication failure"})
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    deferred = wait_deferred(daemon, qid)
    # The session happened and it is what deferred the mail: one AUTH,
    # answered 454, nothing tried after it; the reason says so.
    tried = [session for session in upstream.sessions if session.auths()]
    assert tried, "no session authenticated: " + upstream.describe()
    for session in upstream.sessions:
        assert [(c.mechanism, c.code) for c in session.auths()] in \
            ([], [("CRAM-MD5", 454)]), upstream.describe()
        assert session.index("MAIL") is None, upstream.describe()
    assert "dsn=4." in deferred.group(0), deferred.group(0)
    assert "454 4.7.0 Temporary authentication failure" in \
        deferred.group(0), deferred.group(0)
    assert_still_queued(ctl, daemon, upstream, qid)


def test_smtp_auth_key_selects_mechanism(auth_upstream_factory,
                                         daemon_factory, authinfo, password):
    """smtp-auth in the entry names the mechanism, as smtpmail reads it."""
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password, smtp_auth="login")
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_delivered(daemon, upstream, qid)
    assert [(c.mechanism, c.code) for c in upstream.auth_commands()] == \
        [("LOGIN", 235)], upstream.describe()


def test_relay_user_selects_entry(auth_upstream_factory, daemon_factory,
                                  authinfo, password):
    """With user set on the relay only entries with that login count."""
    upstream = auth_upstream_factory({USER: password, "other": "otherpw"})
    write_authinfo(authinfo,
                   authinfo_line("127.0.0.1", upstream.port, "other",
                                 "wrong-for-other")
                   + authinfo_line("127.0.0.1", upstream.port, USER,
                                   password))
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"], user=USER)
    qid, _ = submit(daemon)
    wait_delivered(daemon, upstream, qid)
    assert upstream.handler.attempts == [("CRAM-MD5", USER, True)]
    daemon.wait_log(rf"authenticated as {re.escape(USER)} with CRAM-MD5")


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "PLAIN", "LOGIN"])
def test_utf8_password(auth_upstream_factory, daemon_factory, authinfo,
                       mechanism):
    password = new_password("pässwörd-€")
    upstream = auth_upstream_factory({USER: password},
                                     mechanisms=(mechanism,))
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_delivered(daemon, upstream, qid)
    assert upstream.handler.attempts == [(mechanism, USER, True)]
    assert_no_secret(daemon.log(), (USER, password))


# --------------------------------------------------------------------------
# No credentials over a connection without TLS

@pytest.mark.parametrize("auth_first", [True, False],
                         ids=["auth_first", "on-demand"])
def test_plaintext_auth_refused_without_tls(ctl, auth_upstream_factory,
                                            daemon_factory, authinfo,
                                            password, auth_first):
    upstream = auth_upstream_factory({USER: password}, tls=None,
                                     mechanisms=("PLAIN", "LOGIN"))
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(
        daemon_factory, upstream, authinfo, tls="none",
        auth_first=[r"^127\.0\.0\.1$"] if auth_first else None)
    qid, _ = submit(daemon)
    deferred = wait_deferred(daemon, qid)
    assert upstream.auth_commands() == [], \
        f"credentials sent without TLS: {upstream.describe()}"
    assert upstream.sessions, "the daemon never connected"
    if auth_first:
        assert upstream.mail_commands_seen() == [], upstream.describe()
    assert daemon.log_lines(r"allow_plaintext_auth"), \
        f"no log line names allow_plaintext_auth; deferral: " \
        f"{deferred.group(0)}"
    assert_still_queued(ctl, daemon, upstream, qid)
    assert_no_secret(daemon.log(), (USER, password))


def test_plaintext_auth_allowed_by_config(auth_upstream_factory,
                                          daemon_factory, authinfo, password):
    upstream = auth_upstream_factory({USER: password}, tls=None,
                                     mechanisms=("PLAIN", "LOGIN"))
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo, tls="none",
                          allow_plaintext_auth=True,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, message = submit(daemon)
    relayed = wait_delivered(daemon, upstream, qid)
    assert_relayed(relayed[0], message)
    auths = upstream.auth_commands()
    assert [(c.mechanism, c.code, c.tls) for c in auths] == \
        [("PLAIN", 235, False)], upstream.describe()


@pytest.mark.parametrize("allow", [False, True],
                         ids=["refused", "allowed"])
def test_cram_md5_without_tls_needs_permission(ctl, auth_upstream_factory,
                                               daemon_factory, authinfo,
                                               password, allow):
    """No credentials at all without TLS, even CRAM-MD5's, unless the
    relay says allow_plaintext_auth = true."""
    upstream = auth_upstream_factory({USER: password}, tls=None,
                                     mechanisms=("CRAM-MD5", "PLAIN"))
    save_credentials(authinfo, upstream, password)
    daemon = start_daemon(daemon_factory, upstream, authinfo, tls="none",
                          auth_first=[r"^127\.0\.0\.1$"],
                          allow_plaintext_auth=allow)
    qid, _ = submit(daemon)
    if not allow:
        deferred = wait_deferred(daemon, qid)
        assert "refusing to send credentials over an unencrypted " \
            "connection (set allow_plaintext_auth = true to allow)" in \
            deferred.group(0), deferred.group(0)
        assert upstream.auth_commands() == [], \
            f"credentials sent without TLS: {upstream.describe()}"
        assert upstream.mail_commands_seen() == [], upstream.describe()
        assert_still_queued(ctl, daemon, upstream, qid)
        return
    wait_delivered(daemon, upstream, qid)
    assert [(c.mechanism, c.code, c.tls)
            for c in upstream.auth_commands()] == \
        [("CRAM-MD5", 235, False)], upstream.describe()


# --------------------------------------------------------------------------
# Missing, wrong and refused credentials

def test_wrong_password_then_fixed_file(ctl, auth_upstream_factory,
                                        daemon_factory, authinfo, password):
    """The automatic path: the daemon notices the edited file by itself
    (no restart, no signal, no smarthostctl) and retries at once, long
    before the relay's 10-minute backoff ends."""
    upstream = auth_upstream_factory({USER: password})
    wrong = new_password("wrong")
    save_credentials(authinfo, upstream, wrong)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          settings=LONG_BACKOFF)
    hostport = f"127.0.0.1:{upstream.port}"
    qid, message = submit(daemon)
    wait_deferred(daemon, qid)
    failed = daemon.wait_log(
        rf"authentication to {re.escape(hostport)} failed: .*$")
    assert authinfo in failed.group(0) and \
        f"smarthostctl login {hostport}" in failed.group(0), \
        f"the log line does not name the fix: {failed.group(0)}"
    assert (("CRAM-MD5", USER, False) in upstream.handler.attempts), \
        upstream.handler.attempts
    assert_still_queued(ctl, daemon, upstream, qid)
    # Counted once, under the relay's name (a 10-minute backoff: no
    # second attempt yet).
    metrics = samples_of(ctl_metrics(daemon))
    assert metrics[("smarthostd_auth_failures_total",
                    (("relay", "upstream"),))] == 1, metrics

    save_credentials(authinfo, upstream, password)
    relayed = wait_delivered(daemon, upstream, qid, timeout=FIX_TIMEOUT)
    assert_relayed(relayed[0], message)
    assert_auth_before_mail(data_sessions(upstream)[0])
    assert_no_secret(daemon.log(), (USER, wrong), (USER, password))


def test_password_command_then_credentials_changed(ctl, auth_upstream_factory,
                                                   daemon_factory, authinfo,
                                                   password, tmp_path):
    """password_command gives the password; after a rejection the relay
    backs off for 10 minutes, and no credential file changes (the command's
    output is not watched), so only smarthostctl credentials-changed can
    bring the mail out within the test."""
    upstream = auth_upstream_factory({USER: password})
    secret_file = tmp_path / "secret"
    wrong = new_password("wrong")
    secret_file.write_text(wrong + "\n")
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"], user=USER,
                          password_command=f"cat {secret_file}",
                          settings=LONG_BACKOFF)
    hostport = f"127.0.0.1:{upstream.port}"
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    failed = daemon.wait_log(
        rf"authentication to {re.escape(hostport)} failed: .*$")
    assert "password_command" in failed.group(0), failed.group(0)
    assert ("CRAM-MD5", USER, False) in upstream.handler.attempts

    secret_file.write_text(password + "\n")
    since = len(daemon.log().encode())
    changed = run_ctl(ctl, daemon.config_path, "credentials-changed")
    assert changed.returncode == 0, (changed.stdout, changed.stderr)
    daemon.wait_log(r"credentials changed; retrying deferred mail",
                    since=since)
    wait_delivered(daemon, upstream, qid, timeout=10)
    assert_auth_before_mail(data_sessions(upstream)[0])
    assert_no_secret(daemon.log(), (USER, wrong), (USER, password))


def test_missing_credentials_with_auth_first(ctl, auth_upstream_factory,
                                             daemon_factory, authinfo,
                                             password):
    upstream = auth_upstream_factory({USER: password})
    assert not os.path.exists(authinfo)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    hostport = f"127.0.0.1:{upstream.port}"
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    fix = daemon.wait_log(rf"^.*{re.escape(hostport)}.*smarthostctl login"
                          r".*$")
    assert authinfo in fix.group(0), fix.group(0)
    assert upstream.mail_commands_seen() == [], upstream.describe()
    assert upstream.auth_commands() == [], upstream.describe()
    assert_still_queued(ctl, daemon, upstream, qid)


def test_entry_without_password(ctl, auth_upstream_factory, daemon_factory,
                                authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, None)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    daemon.wait_log(r"no password.*smarthostctl login")
    assert upstream.auth_commands() == [], upstream.describe()
    assert_still_queued(ctl, daemon, upstream, qid)


def test_world_readable_authinfo_refused(ctl, auth_upstream_factory,
                                         daemon_factory, authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password)
    os.chmod(authinfo, 0o644)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          settings=LONG_BACKOFF)
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    daemon.wait_log(rf"chmod 600 {re.escape(authinfo)}")
    assert upstream.auth_commands() == [], upstream.describe()
    assert_still_queued(ctl, daemon, upstream, qid)
    # The chmod that the log suggests fixes it, without a restart.
    os.chmod(authinfo, 0o600)
    wait_delivered(daemon, upstream, qid, timeout=FIX_TIMEOUT)


def test_authinfo_owned_by_another_user_refused(ctl, auth_upstream_factory,
                                                daemon_factory, authinfo,
                                                password):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    upstream = auth_upstream_factory({USER: password})
    save_credentials(authinfo, upstream, password)
    os.chown(authinfo, 65534, 65534)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    daemon.wait_log(rf"chown \S+ {re.escape(authinfo)}")
    assert upstream.auth_commands() == [], upstream.describe()
    assert_still_queued(ctl, daemon, upstream, qid)


# --------------------------------------------------------------------------
# Secrets stay secret

@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "PLAIN", "LOGIN"])
def test_password_in_no_log(ctl, auth_upstream_factory, daemon_factory,
                            authinfo, password, mechanism):
    """The -d protocol trace shows <redacted>, never a password or its
    base64 forms: neither a rejected one nor the right one."""
    upstream = auth_upstream_factory({USER: password},
                                     mechanisms=(mechanism,))
    wrong = new_password("wrong")
    save_credentials(authinfo, upstream, wrong)
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"])
    qid, _ = submit(daemon)
    wait_deferred(daemon, qid)
    save_credentials(authinfo, upstream, password)
    wait_delivered(daemon, upstream, qid, timeout=FIX_TIMEOUT)
    assert (mechanism, USER, False) in upstream.handler.attempts
    assert (mechanism, USER, True) in upstream.handler.attempts
    log = daemon.log()
    assert re.search(rf"AUTH {mechanism}\b", log), \
        "no protocol trace of AUTH in the -d log"
    assert_no_secret(log, (USER, wrong), (USER, password))
    assert "<redacted>" in log, "the trace shows no <redacted>"


# --------------------------------------------------------------------------
# smarthostctl login and credentials

def test_login_saves_and_delivers(ctl, auth_upstream_factory, daemon_factory,
                                  authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    daemon = start_daemon(daemon_factory, upstream, authinfo,
                          auth_first=[r"^127\.0\.0\.1$"],
                          settings=LONG_BACKOFF)
    qid, message = submit(daemon)
    wait_deferred(daemon, qid)
    daemon.wait_log(r"smarthostctl login")
    assert upstream.auth_commands() == [], upstream.describe()

    target = f"127.0.0.1:{upstream.port}"
    login = run_ctl(ctl, daemon.config_path, "login", target,
                    stdin=f"{USER}\n{password}\ny\n", opts=("-d",))
    assert login.returncode == 0, (login.stdout, login.stderr)
    assert "authenticated with CRAM-MD5" in login.stdout, login.stdout
    assert f"saved to {authinfo}, line 1" in login.stdout, login.stdout
    assert_no_secret(login.stdout + login.stderr, (USER, password),
                     where="smarthostctl -d login's output")

    st = os.stat(authinfo)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    with open(authinfo, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1, lines
    words = lines[0].split()
    assert words[0] == "machine" and dict(zip(words[::2], words[1::2])) == {
        "machine": "127.0.0.1", "port": str(upstream.port), "login": USER,
        "password": password}, lines[0]

    # The login session authenticated and sent no mail.
    login_sessions = [s for s in upstream.sessions if s.auth_ok()]
    assert login_sessions and login_sessions[0].index("MAIL") is None, \
        upstream.describe()

    relayed = wait_delivered(daemon, upstream, qid, timeout=10)
    assert_relayed(relayed[0], message)
    assert_auth_before_mail(data_sessions(upstream)[0])
    assert_no_secret(daemon.log(), (USER, password))


def test_login_wrong_password_saves_nothing(ctl, auth_upstream_factory,
                                            daemon_factory, authinfo,
                                            password):
    upstream = auth_upstream_factory({USER: password})
    daemon = start_daemon(daemon_factory, upstream, authinfo, start=False)
    login = run_ctl(ctl, daemon.config_path, "login",
                    f"127.0.0.1:{upstream.port}",
                    stdin=f"{USER}\nnot-{password}\ny\n")
    assert login.returncode == 77, (login.returncode, login.stdout,
                                    login.stderr)
    assert "Save to" not in login.stderr + login.stdout
    assert not os.path.exists(authinfo)
    assert upstream.mail_commands_seen() == []


def test_credentials_command(ctl, auth_upstream_factory, daemon_factory,
                             authinfo, password):
    upstream = auth_upstream_factory({USER: password})
    port = str(upstream.port)
    write_authinfo(authinfo,
                   "# credentials for the tests\n"
                   + authinfo_line("elsewhere.example", port, "x", "y")
                   + authinfo_line("127.0.0.1", port, USER, password))
    daemon = start_daemon(daemon_factory, upstream, authinfo, start=False)
    config = daemon.config_path

    shown = run_ctl(ctl, config, "credentials", "127.0.0.1", port)
    assert shown.returncode == 0, shown.stderr
    fields = ctl_fields(shown.stdout)
    assert fields["file"] == [authinfo]
    assert fields["line"] == ["3"]
    assert fields["login"] == [USER]
    assert fields["password"] == ["present"]
    assert password not in shown.stdout + shown.stderr

    secret = run_ctl(ctl, config, "credentials", "127.0.0.1", port, USER,
                     "--show-secret")
    assert secret.returncode == 0, secret.stderr
    fields = ctl_fields(secret.stdout)
    assert fields["password"] == [password]
    assert fields["secret"] == [password]

    shown = run_ctl(ctl, config, "credentials", "--json", "127.0.0.1", port)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "file": authinfo, "line": 3, "default": False, "host": "127.0.0.1",
        "port": port, "login": USER, "password": "present",
        "gpg_token": False, "smtp_auth": None}
    assert password not in shown.stdout + shown.stderr
    secret = run_ctl(ctl, config, "credentials", "127.0.0.1", port, USER,
                     "--json", "--show-secret")
    assert secret.returncode == 0, secret.stderr
    assert json.loads(secret.stdout)["password"] == password

    other = run_ctl(ctl, config, "credentials", "127.0.0.1", port, "nobody")
    assert other.returncode == 67, (other.stdout, other.stderr)
    assert "smarthostctl login" in other.stderr

    os.chmod(authinfo, 0o640)
    refused = run_ctl(ctl, config, "credentials", "127.0.0.1", port)
    assert refused.returncode == 78, (refused.stdout, refused.stderr)
    assert f"chmod 600 {authinfo}" in refused.stderr
    assert password not in refused.stdout + refused.stderr
