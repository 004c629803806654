"""Building blocks of the authentication tests (test_auth.py).

An aiosmtpd upstream that speaks AUTH (CRAM-MD5 implemented here, PLAIN
and LOGIN from aiosmtpd) and records, per connection, every command it
was sent with the replies it gave, so that the tests can check from the
upstream's side when the daemon authenticated; authinfo files; and the
smarthostctl command.

Everything here is bounded: subprocesses have timeouts, and the upstream
is stopped by its owner (see harness.Upstream).
"""

import base64
import functools
import hashlib
import hmac
import os
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.smtp import MISSING, AuthResult, auth_mechanism

from harness import (UPSTREAM_HOSTNAME, RecordingHandler, Upstream,
                     _Controller, _NullSenderSMTP, server_tls_context)

MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")


# --------------------------------------------------------------------------
# smarthostctl

def smarthostctl_binary():
    """The smarthostctl built next to the daemon: SMARTHOSTCTL, else the
    directory of SMARTHOSTD, else TOP_BUILDDIR/src."""
    binary = os.environ.get("SMARTHOSTCTL")
    if not binary and os.environ.get("SMARTHOSTD"):
        binary = os.path.join(os.path.dirname(os.environ["SMARTHOSTD"]),
                              "smarthostctl")
    if not binary and os.environ.get("TOP_BUILDDIR"):
        binary = os.path.join(os.environ["TOP_BUILDDIR"], "src",
                              "smarthostctl")
    return binary


def run_ctl(binary, config_path, *args, stdin="", opts=(), timeout=30):
    """Runs smarthostctl [opts] -c config_path args...; stdin is its
    standard input (a string; "" means an empty pipe, so login never looks
    for a terminal). Returns the CompletedProcess (text)."""
    return subprocess.run([binary, *opts, "-c", config_path, *args],
                          input=stdin, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def ctl_fields(stdout):
    """The "key: value" lines of smarthostctl's output as a dict of lists
    (a key may repeat, e.g. auth-required)."""
    fields = {}
    for line in stdout.splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            fields.setdefault(key, []).append(value)
        elif line.endswith(":"):
            fields.setdefault(line[:-1], []).append("")
    return fields


# --------------------------------------------------------------------------
# authinfo files

def quote_value(value):
    """value as an authinfo token both Emacs and smarthostd read back."""
    if value and not any(c in value for c in " \t\"'#\\"):
        return value
    assert "'" not in value, f"cannot quote {value!r} simply"
    return f"'{value}'"


def authinfo_line(host, port, login, password, **extra):
    """One "machine HOST port PORT login USER password SECRET" line; extra
    keys (e.g. smtp_auth="LOGIN" for smtp-auth) follow; a None value
    leaves its key out."""
    words = [("machine", host), ("port", port), ("login", login),
             ("password", password)]
    words += [(key.replace("_", "-"), value) for key, value in extra.items()]
    return " ".join(f"{key} {quote_value(str(value))}"
                    for key, value in words if value is not None) + "\n"


def write_authinfo(path, text, mode=0o600):
    """Writes text (a str) to path with mode, as an editor would: the same
    file, truncated and rewritten (its mtime changes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def new_password(prefix="pw"):
    """A password no log could contain by chance."""
    return f"{prefix}-{secrets.token_hex(8)}-Zq"


def secret_forms(user, password):
    """Every form in which a password (or OAuth token) could leak into a
    log: itself, its hex, and base64 of itself and of the PLAIN, LOGIN,
    XOAUTH2 and OAUTHBEARER answers that carry it. SCRAM never sends the
    password; what it derives from it is in key_forms()."""
    pw = password.encode("utf-8")
    u = user.encode("utf-8")
    blobs = [pw, b"\0" + u + b"\0" + pw, u + b"\0" + u + b"\0" + pw,
             b"user=" + u + b"\x01auth=Bearer " + pw + b"\x01\x01",
             b"n,a=" + u + b",\x01auth=Bearer " + pw + b"\x01\x01",
             b"n,,\x01auth=Bearer " + pw + b"\x01\x01"]
    forms = {password, pw.hex(), f"Bearer {password}"}
    for blob in blobs:
        forms.add(base64.b64encode(blob).decode())
    return sorted(forms)


def key_forms(keys):
    """The forms in which binary secrets (SCRAM's salted password and the
    keys derived from it) could leak: hex in either case, base64."""
    forms = set()
    for key in keys:
        forms |= {key.hex(), key.hex().upper(),
                  base64.b64encode(key).decode()}
    return sorted(forms)


# --------------------------------------------------------------------------
# The upstream

@dataclass
class Command:
    """One command an upstream session received: verb upper-case, arg as
    sent (AUTH's initial response included), replies every status line
    the upstream pushed for it (334 challenges, then the final one), tls
    whether the connection was encrypted when it came."""
    verb: str
    arg: str
    tls: bool
    replies: list = field(default_factory=list)

    @property
    def code(self):
        """The final reply's code, or None before there is one."""
        return int(self.replies[-1][:3]) if self.replies else None

    @property
    def mechanism(self):
        return self.arg.split()[0].upper() if self.arg.split() else ""

    def __str__(self):
        what = self.verb if self.verb != "AUTH" else f"AUTH {self.mechanism}"
        return f"{what}->{self.code}"


class SessionRecord:
    """The commands of one connection to the upstream, in order."""

    def __init__(self, number):
        self.number = number
        self._commands = []
        self._lock = threading.Lock()

    def add(self, command):
        with self._lock:
            self._commands.append(command)

    def reply(self, status):
        with self._lock:
            if self._commands:
                self._commands[-1].replies.append(status)

    @property
    def commands(self):
        with self._lock:
            return [Command(c.verb, c.arg, c.tls, list(c.replies))
                    for c in self._commands]

    def verbs(self):
        return [c.verb for c in self.commands]

    def auths(self):
        return [c for c in self.commands if c.verb == "AUTH"]

    def auth_ok(self):
        """The mechanism that succeeded in this session, or None."""
        for c in self.auths():
            if c.code == 235:
                return c.mechanism
        return None

    def index(self, verb, start=0):
        """Index of the first command verb at or after start, or None."""
        for i, c in enumerate(self.commands):
            if i >= start and c.verb == verb:
                return i
        return None

    def describe(self):
        return f"session {self.number}: " + " ".join(
            str(c) for c in self.commands)


def _recorded(verb):
    base = getattr(_NullSenderSMTP, "smtp_" + verb)

    @functools.wraps(base)
    async def method(self, arg):
        self._shd_record.add(Command(verb, arg or "",
                                     self._tls_protocol is not None))
        return await base(self, arg)
    return method


class _RecordingSMTP(_NullSenderSMTP):
    """aiosmtpd's SMTP, one per connection, recording what it is sent into
    a SessionRecord registered with the handler."""

    def __init__(self, handler, *args, **kwargs):
        super().__init__(handler, *args, **kwargs)
        self._shd_record = handler.new_session()

    async def push(self, status):
        text = status.decode("utf-8", "replace") \
            if isinstance(status, bytes) else status
        self._shd_record.reply(text.rstrip("\r\n"))
        result = await super().push(status)
        commands = self._shd_record.commands
        if (text.startswith("530") and commands
                and commands[-1].verb == "MAIL"
                and self.event_handler.take_hangup_after_530()):
            # as some servers do: demand AUTH, then hang up
            self.transport.close()
        return result

    smtp_EHLO = _recorded("EHLO")
    smtp_HELO = _recorded("HELO")
    smtp_STARTTLS = _recorded("STARTTLS")
    smtp_AUTH = _recorded("AUTH")
    smtp_MAIL = _recorded("MAIL")
    smtp_RCPT = _recorded("RCPT")
    smtp_DATA = _recorded("DATA")
    smtp_RSET = _recorded("RSET")
    smtp_NOOP = _recorded("NOOP")
    smtp_QUIT = _recorded("QUIT")


class _AuthController(_Controller):
    def factory(self):
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class AuthHandler(RecordingHandler):
    """A RecordingHandler that knows users (login -> password), checks
    PLAIN and LOGIN through authenticate() and implements CRAM-MD5
    (RFC 2195) itself, with a fresh random challenge each time.

    reject maps a mechanism to the reply its AUTH gets whatever the
    credentials (e.g. {"CRAM-MD5": "535 5.7.8 no"}), after the exchange.
    rcpt_unauthenticated, when set, is the reply RCPT gets in a session
    that has not authenticated. hangup_after_530: the upstream closes the
    connection right after its next so many 530 replies to MAIL. Tests
    may change users, reject and rcpt_unauthenticated while the upstream
    runs.

    NB: aiosmtpd takes every attribute whose name starts with "auth_" for
    a mechanism: none but auth_CRAM_MD5 may.
    """

    def __init__(self, users, reject=None, rcpt_unauthenticated=None,
                 hangup_after_530=0, **kwargs):
        super().__init__(**kwargs)
        self.users = dict(users)
        self.reject = dict(reject or {})
        self.rcpt_unauthenticated = rcpt_unauthenticated
        self.hangup_after_530 = hangup_after_530
        self.attempts = []  # (mechanism, login, success)
        self._sessions = []
        self._slock = threading.Lock()

    def take_hangup_after_530(self):
        """Whether to hang up after this 530 (counts it down)."""
        with self._slock:
            if self.hangup_after_530 > 0:
                self.hangup_after_530 -= 1
                return True
            return False

    def new_session(self):
        with self._slock:
            record = SessionRecord(len(self._sessions) + 1)
            self._sessions.append(record)
            return record

    @property
    def sessions(self):
        """The sessions that sent at least one command, in order (the
        controller's own start-up probe sends none)."""
        with self._slock:
            records = list(self._sessions)
        return [s for s in records if s.commands]

    def _check(self, mechanism, login, ok):
        with self._slock:
            self.attempts.append((mechanism, login, ok))
        if mechanism in self.reject:
            return AuthResult(success=False, handled=False,
                              message=self.reject[mechanism])
        if ok:
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Authentication credentials "
                                  "invalid")

    def authenticate(self, server, session, envelope, mechanism, data):
        """aiosmtpd's authenticator for its PLAIN and LOGIN."""
        login = data.login.decode("utf-8", "replace")
        password = self.users.get(login)
        ok = password is not None and hmac.compare_digest(
            data.password, password.encode("utf-8"))
        return self._check(mechanism, login, ok)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server, args):
        if len(args) != 1:
            await server.push("501 5.5.4 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = (f"<{secrets.randbits(62)}.{int(time.time())}"
                     f"@{UPSTREAM_HOSTNAME}>").encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:       # "*" or bad base64: 501 already sent
            return AuthResult(success=False, handled=True)
        login, _, digest = answer.rpartition(b" ")
        login = login.decode("utf-8", "replace")
        password = self.users.get(login)
        ok = False
        if password is not None:
            want = hmac.new(password.encode("utf-8"), challenge,
                            hashlib.md5).hexdigest().encode()
            ok = hmac.compare_digest(digest, want)
        return self._check("CRAM-MD5", login, ok)

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        if self.rcpt_unauthenticated and not session.authenticated:
            return self.rcpt_unauthenticated
        return await super().handle_RCPT(server, session, envelope, address,
                                         rcpt_options)


class AuthUpstream(Upstream):
    """An upstream that offers AUTH.

    users: login -> password. mechanisms: those it offers (a subset of
    MECHANISMS). required: answer MAIL with 530 until authenticated.
    tls: a CertPair for STARTTLS, or None; AUTH is offered only after
    STARTTLS when tls is set, and over the plain connection when not.
    """

    def __init__(self, users, tls=None, mechanisms=MECHANISMS, required=True,
                 reject=None, rcpt_unauthenticated=None, hangup_after_530=0):
        super().__init__(tls=tls)
        unknown = set(mechanisms) - set(MECHANISMS)
        assert not unknown, f"no server side for {unknown}"
        self.handler = AuthHandler(users, reject=reject,
                                   rcpt_unauthenticated=rcpt_unauthenticated,
                                   hangup_after_530=hangup_after_530)
        self.offered = tuple(mechanisms)
        self.required = required

    def _make_controller(self):
        kwargs = {}
        if self._tls is not None:
            kwargs["tls_context"] = server_tls_context(self._tls)
            kwargs["require_starttls"] = False
        return _AuthController(
            self.handler, hostname="127.0.0.1", port=self.port,
            ready_timeout=10, server_hostname=UPSTREAM_HOSTNAME,
            data_size_limit=64 * 1024 * 1024,
            auth_required=self.required,
            auth_require_tls=self._tls is not None,
            authenticator=self.handler.authenticate,
            auth_exclude_mechanism=[m for m in MECHANISMS
                                    if m not in self.offered],
            **kwargs)

    @property
    def sessions(self):
        return self.handler.sessions

    def describe(self):
        """Every session's commands, for assertion messages."""
        return "; ".join(s.describe() for s in self.sessions) or \
            "no session"

    def auth_commands(self):
        return [c for s in self.sessions for c in s.auths()]

    def mail_commands_seen(self):
        return [c for s in self.sessions for c in s.commands
                if c.verb == "MAIL"]


# --------------------------------------------------------------------------
# XOAUTH2 (test_auth_extra.py)

OAUTH_MECHANISMS = MECHANISMS + ("XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 4096


class OAuthHandler(AuthHandler):
    """An AuthHandler that also implements the server side of XOAUTH2
    (Google's: base64 of "user=U^Aauth=Bearer TOKEN^A^A"). tokens maps a
    user to the one token it accepts. Every decoded exchange is kept in
    oauth_seen as (user, auth) with auth the whole "auth=" value, e.g.
    "Bearer tok-123"."""

    def __init__(self, users, tokens, **kwargs):
        super().__init__(users, **kwargs)
        self.tokens = dict(tokens)
        self.oauth_seen = []
        # What SCRAM derives from the password on both sides: with any
        # of these a listener could authenticate as the user.
        self.scram_keys = []

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 bad base64")
                return AuthResult(success=False, handled=True)
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        fields = {}
        for part in blob.split(b"\x01"):
            if b"=" in part:
                key, _, value = part.partition(b"=")
                fields[key.decode("utf-8", "replace")] = \
                    value.decode("utf-8", "replace")
        user, auth = fields.get("user", ""), fields.get("auth", "")
        with self._slock:
            self.oauth_seen.append((user, auth))
        want = self.tokens.get(user)
        ok = (blob.endswith(b"\x01\x01") and want is not None
              and auth == f"Bearer {want}")
        return self._check("XOAUTH2", user, ok)

    async def _initial_or_challenge(self, server, args):
        """The initial response, or the answer to an empty challenge;
        None after a 501 (bad base64, "*")."""
        if len(args) > 1:
            try:
                return base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 bad base64")
                return None
        blob = await server.challenge_auth("")
        return None if blob is MISSING else blob

    @auth_mechanism("OAUTHBEARER")
    async def auth_OAUTHBEARER(self, server, args):
        """RFC 7628: "n,a=USER,^Aauth=Bearer TOKEN^A^A"."""
        blob = await self._initial_or_challenge(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        gs2, _, rest = blob.partition(b"\x01")
        user = ""
        for part in gs2.split(b","):
            if part.startswith(b"a="):
                user = part[2:].decode("utf-8", "replace")
        fields = dict(part.decode("utf-8", "replace").partition("=")[::2]
                      for part in rest.split(b"\x01") if b"=" in part)
        auth = fields.get("auth", "")
        with self._slock:
            self.oauth_seen.append((user, auth))
        want = self.tokens.get(user)
        ok = (gs2.startswith(b"n,") and blob.endswith(b"\x01\x01")
              and want is not None and auth == f"Bearer {want}")
        return self._check("OAUTHBEARER", user, ok)

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM_SHA_256(self, server, args):
        """RFC 5802/7677 with the password of self.users; the server
        proves itself with v= before the 235."""
        first = await self._initial_or_challenge(server, args)
        if first is None:
            return AuthResult(success=False, handled=True)
        first = first.decode("utf-8", "replace")
        if not first.startswith("n,,"):
            return self._check("SCRAM-SHA-256", "", False)
        bare = first[3:]
        attrs = dict(a.split("=", 1) for a in bare.split(",") if "=" in a)
        user, cnonce = attrs.get("n", ""), attrs.get("r", "")
        password = self.users.get(user)
        salt = secrets.token_bytes(16)
        nonce = cnonce + secrets.token_hex(12)
        server_first = (f"r={nonce},s={base64.b64encode(salt).decode()},"
                        f"i={SCRAM_ITERATIONS}")
        final = await server.challenge_auth(server_first)
        if final is MISSING:
            return AuthResult(success=False, handled=True)
        final = final.decode("utf-8", "replace")
        without_proof, _, proof = final.rpartition(",p=")
        if password is None or without_proof != f"c=biws,r={nonce}":
            return self._check("SCRAM-SHA-256", user, False)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt,
                                     SCRAM_ITERATIONS)
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        signature = hmac.new(stored, auth_message, "sha256").digest()
        want = base64.b64encode(bytes(
            a ^ b for a, b in zip(client_key, signature))).decode()
        if not hmac.compare_digest(proof, want):
            return self._check("SCRAM-SHA-256", user, False)
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        with self._slock:
            self.scram_keys += [salted, client_key, stored, server_key]
        verifier = base64.b64encode(
            hmac.new(server_key, auth_message, "sha256").digest()).decode()
        if await server.challenge_auth(f"v={verifier}") is MISSING:
            return AuthResult(success=False, handled=True)
        return self._check("SCRAM-SHA-256", user, True)


class OAuthUpstream(AuthUpstream):
    """An AuthUpstream that may also offer XOAUTH2 (mechanisms is a subset
    of OAUTH_MECHANISMS); tokens: user -> the token XOAUTH2 accepts."""

    def __init__(self, users, tokens, tls=None, mechanisms=("XOAUTH2",),
                 required=True):
        super().__init__(users, tls=tls,
                         mechanisms=[m for m in mechanisms
                                     if m in MECHANISMS],
                         required=required)
        unknown = set(mechanisms) - set(OAUTH_MECHANISMS)
        assert not unknown, f"no server side for {unknown}"
        self.handler = OAuthHandler(users, tokens)
        self.offered = tuple(mechanisms)

    def _make_controller(self):
        controller = super()._make_controller()
        controller.SMTP_kwargs["auth_exclude_mechanism"] = [
            m for m in OAUTH_MECHANISMS if m not in self.offered]
        return controller
