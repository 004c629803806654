"""Building blocks of the end-to-end suite.

The pieces the fixtures in conftest.py assemble and the tests drive: a
test PKI made with the openssl command, an aiosmtpd upstream that records
what it is sent (or answers from a script), the smarthostd daemon itself
with its config and log, and SMTP clients (smtplib over TCP or a Unix
socket, and a raw line client for protocol edge cases).

Everything is bounded: every wait has a deadline and every process or
thread started here is stopped by its owner.
"""

import base64
import email
import email.policy
import email.utils
import errno
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

HOSTNAME = "smarthost.test"
UPSTREAM_HOSTNAME = "upstream.test"
CLIENT_HOSTNAME = "client.test"
QUEUE_ID_RE = re.compile(r"queued as ([0-9A-F]{16})\b")
EX_CONFIG = 78


# --------------------------------------------------------------------------
# Waiting

TIMEOUT_SCALE = float(os.environ.get("SMARTHOSTD_TIMEOUT_SCALE", "1"))


def scaled(seconds):
    """seconds times SMARTHOSTD_TIMEOUT_SCALE: the bound of any wait for
    the daemon or for what it does (a reply that follows an fsync, an exit,
    a log line), which a checker such as valgrind slows down."""
    return seconds * TIMEOUT_SCALE


def check_config(binary, path):
    """smarthostd -t -c path: the configuration check, its output as
    text."""
    return subprocess.run([binary, "-t", "-c", str(path)],
                          capture_output=True, text=True,
                          timeout=scaled(15))


def wait_until(predicate, timeout, what, interval=0.05):
    """Polls predicate() until it returns something true, then returns it.

    Fails the test with a message naming what was awaited (what, or
    what() if it is callable) once timeout seconds have passed, times
    SMARTHOSTD_TIMEOUT_SCALE (for a daemon under valgrind).
    """
    __tracebackhide__ = True
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            if callable(what):
                what = what()
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# Test PKI

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $ENV::SHD_SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


SERVER_SAN = "DNS:localhost, IP:127.0.0.1, IP:::1"


@dataclass(frozen=True)
class CertPair:
    """A server certificate, its key and the CA that signed it."""
    ca_cert: str
    cert: str
    key: str


@dataclass(frozen=True)
class CertAuthority:
    cert: str
    key: str
    directory: str


def _openssl_config(directory):
    cnf = os.path.join(directory, "openssl.cnf")
    if not os.path.exists(cnf):
        with open(cnf, "w", encoding="ascii") as f:
            f.write(_OPENSSL_CNF)
    return cnf


def _openssl(*args, san=SERVER_SAN):
    subprocess.run(["openssl", *args], check=True, capture_output=True,
                   timeout=60, env=dict(os.environ, SHD_SAN=san))


_KEYOPTS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def make_ca(directory, name):
    """A self-signed test CA named name, under directory."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, f"{name}-ca.pem")
    key = os.path.join(directory, f"{name}-ca.key")
    _openssl("req", "-config", _openssl_config(directory), "-x509",
             "-extensions", "v3_ca", *_KEYOPTS, "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/CN=smarthostd {name} test CA")
    return CertAuthority(cert=cert, key=key, directory=directory)


def issue_server_cert(ca, name, san=SERVER_SAN):
    """A server certificate for the subjectAltName san, signed by ca."""
    cnf = _openssl_config(ca.directory)

    def path(leaf):
        return os.path.join(ca.directory, f"{name}-{leaf}")

    _openssl("req", "-config", cnf, "-new", *_KEYOPTS,
             "-keyout", path("server.key"), "-out", path("server.csr"),
             "-subj", "/CN=smarthostd test server", san=san)
    _openssl("x509", "-req", "-in", path("server.csr"),
             "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
             "-extfile", cnf, "-extensions", "v3_server",
             "-days", "2", "-out", path("server.pem"), san=san)
    return CertPair(ca_cert=ca.cert, cert=path("server.pem"),
                    key=path("server.key"))


def server_tls_context(pair):
    """An ssl context for a server presenting pair's certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


# --------------------------------------------------------------------------
# Upstream: aiosmtpd in a thread

NULL_SENDER = "<>"


@dataclass
class RelayedMessage:
    """One message the upstream accepted. mail_from is "" for <>; tls
    tells whether the session had done STARTTLS, tls_resumed whether its
    handshake resumed a TLS session (the server's own word); peer is the
    client's (address, port), the same for messages of one connection; at
    is when the final dot was handled (time.monotonic(), just before the
    reply was sent)."""
    mail_from: str
    rcpt_tos: list
    content: bytes
    tls: bool
    at: float = 0.0
    tls_resumed: bool = False
    peer: tuple = None

    def parsed(self):
        return email.message_from_bytes(self.content,
                                        policy=email.policy.compat32)


class RecordingHandler:
    """aiosmtpd handler that stores every accepted message.

    rcpt_replies maps a lower-case recipient address to the reply its
    RCPT gets (a non-2xx reply refuses it); tests may change it while the
    upstream runs. data_replies lists replies for the next DATA commands,
    one consumed per DATA; a 2xx one (or none left) stores the message.
    """

    # A data_replies entry: store the message, then hang up without a
    # reply, as an upstream that crashes or loses its link after taking
    # the message does.
    STORE_THEN_DROP = "store, then drop the connection"

    def __init__(self, rcpt_replies=None, data_replies=None):
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_replies = list(data_replies or [])
        self.mail_commands = 0
        self.data_commands = 0
        self.idle_drops = 0
        self._messages = []
        self._wires = []
        self._lock = threading.Lock()

    def wire_for(self, connection):
        """A new record of the bytes one connection sends (after
        STARTTLS, what the TLS layer decrypted)."""
        wire = bytearray()
        with self._lock:
            self._wires.append(wire)
        return wire

    def note_idle_drop(self):
        """Counts a MAIL that an idle limit hung up on."""
        with self._lock:
            self.idle_drops += 1

    async def handle_MAIL(self, server, session, envelope, address,
                          mail_options):
        with self._lock:
            self.mail_commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.data_commands += 1
            reply = (self.data_replies.pop(0) if self.data_replies
                     else "250 2.0.0 OK stored")
            if not reply.startswith("2") and reply != self.STORE_THEN_DROP:
                return reply
            sender = envelope.mail_from
            # STARTTLS: the session's; implicit TLS: the transport's
            ssl_object = (session.ssl.get("ssl_object")
                          if session.ssl is not None else
                          server.transport.get_extra_info("ssl_object"))
            self._messages.append(RelayedMessage(
                mail_from="" if sender == NULL_SENDER else sender,
                rcpt_tos=list(envelope.rcpt_tos),
                content=bytes(envelope.original_content),
                tls=ssl_object is not None, at=time.monotonic(),
                tls_resumed=bool(ssl_object is not None
                                 and ssl_object.session_reused),
                peer=tuple(session.peer)))
        if reply == self.STORE_THEN_DROP:
            server.transport.abort()
            return "250 2.0.0 OK (never sent: the connection is gone)"
        return reply

    @property
    def messages(self):
        with self._lock:
            return list(self._messages)

    @property
    def wires(self):
        """What each connection sent, byte for byte, in connection
        order."""
        with self._lock:
            return [bytes(w) for w in self._wires]


class _NullSenderSMTP(SMTP):
    """aiosmtpd refuses MAIL FROM:<>; bounces need it, so accept it and
    record the sender as "<>" (the handler maps it to ""). Every byte the
    client sends is kept (RecordingHandler.wires) before aiosmtpd parses
    it: its own parsing unstuffs dots and takes any line for a line."""

    _wire = None

    def data_received(self, data):
        if self._wire is None:
            self._wire = self.event_handler.wire_for(self)
        self._wire += data
        super().data_received(data)

    def _getaddr(self, arg):
        stripped = arg.lstrip()
        if stripped.startswith("<>"):
            return NULL_SENDER, stripped[2:]
        return super()._getaddr(arg)


class _IdleLimitSMTP(_NullSenderSMTP):
    """A server whose idle timeout (idle_limit seconds since its last
    reply) strikes just as the next transaction's MAIL arrives on a
    connection that already carried one: it hangs up on that MAIL without
    a reply (with a reset when idle_reset), the race a client that holds
    connections open between messages must survive. The first MAIL of a
    connection is always served."""

    idle_limit = None
    idle_reset = False
    _quiet_since = None
    _mails = 0

    async def push(self, status):
        self._quiet_since = time.monotonic()
        return await super().push(status)

    async def smtp_MAIL(self, arg):
        self._mails += 1
        if (self._mails > 1 and time.monotonic() - self._quiet_since
                > self.idle_limit):
            self.event_handler.note_idle_drop()
            if self.idle_reset:
                self.transport.abort()
            else:
                self.transport.close()
            return
        await super().smtp_MAIL(arg)


class _Controller(Controller):
    def __init__(self, handler, line_length_limit=None, idle_limit=None,
                 idle_reset=False, **kwargs):
        super().__init__(handler, **kwargs)
        self.protocol = _NullSenderSMTP
        if idle_limit is not None:
            self.protocol = type("_IdleSMTP", (_IdleLimitSMTP,),
                                 {"idle_limit": idle_limit,
                                  "idle_reset": idle_reset})
        if line_length_limit is not None:
            # aiosmtpd takes the limit from the class when it builds
            # the connection's reader.
            self.protocol = type("_LongLineSMTP", (self.protocol,),
                                 {"line_length_limit": line_length_limit})

    def factory(self):
        return self.protocol(self.handler, **self.SMTP_kwargs)


class Upstream:
    """An SMTP server on 127.0.0.1 that the daemon relays to.

    With tls set (a CertPair) it offers STARTTLS with that certificate,
    or with implicit speaks TLS from the first byte (port 465 style); with
    tls None it offers no STARTTLS. line_length_limit raises
    aiosmtpd's limit on a line of message data (1001 bytes with CRLF, the
    stuffed dot counted; a longer line gets 500). size_limit is the SIZE
    it offers and enforces (64 MiB). idle_limit (seconds) hangs up on a
    connection's second and later MAIL when it comes after that long
    without a reply (idle_reset: with a reset), as _IdleLimitSMTP says.
    The port is chosen at creation so
    the daemon can be configured before the upstream starts; start() and
    stop() may be called more than once.
    """

    def __init__(self, tls=None, rcpt_replies=None, data_replies=None,
                 line_length_limit=None, size_limit=64 * 1024 * 1024,
                 idle_limit=None, idle_reset=False, implicit=False):
        self.handler = RecordingHandler(rcpt_replies, data_replies)
        self._tls = tls
        self._implicit = implicit
        self._line_length_limit = line_length_limit
        self._size_limit = size_limit
        self._idle_limit = idle_limit
        self._idle_reset = idle_reset
        self._controller = None
        self._reserved = None
        self.port = None
        self._reserve()

    def _reserve(self):
        """Holds the port with a socket bound to it (not listening, so a
        connection to it is still refused) while the server is not
        running: the kernel then gives it to no other socket bound to
        port 0, such as a daemon's own listener started in between."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port or 0))
        except OSError:
            sock.close()
            return
        self.port = sock.getsockname()[1]
        self._reserved = sock

    def _release(self):
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def _make_controller(self):
        kwargs = {}
        if self._tls is not None and self._implicit:
            kwargs["ssl_context"] = server_tls_context(self._tls)
        elif self._tls is not None:
            kwargs["tls_context"] = server_tls_context(self._tls)
            kwargs["require_starttls"] = False
        return _Controller(self.handler,
                           line_length_limit=self._line_length_limit,
                           idle_limit=self._idle_limit,
                           idle_reset=self._idle_reset,
                           hostname="127.0.0.1",
                           port=self.port, ready_timeout=10,
                           server_hostname=UPSTREAM_HOSTNAME,
                           data_size_limit=self._size_limit, **kwargs)

    def start(self, may_move=False):
        """Starts listening on self.port. If something took that port in
        the meantime, picks another when may_move (nobody was told the
        port yet), else retries for a while."""
        assert self._controller is None, "upstream already running"
        self._release()
        for _ in range(10):
            controller = self._make_controller()
            try:
                controller.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if may_move:
                    self.port = free_port()
                else:
                    time.sleep(0.2)
                continue
            self._controller = controller
            return self
        raise AssertionError(f"upstream port {self.port} stays in use")

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            self._reserve()

    def close(self):
        """Stops the server and lets its port go."""
        self.stop()
        self._release()

    @property
    def messages(self):
        return self.handler.messages

    def wait_messages(self, count, timeout=15):
        """Waits until at least count messages arrived; returns them all."""
        __tracebackhide__ = True
        return wait_until(
            lambda: (msgs if len(msgs := self.messages) >= count else None),
            timeout, lambda: f"{count} message(s) at the upstream "
                             f"(got {len(self.messages)})")

    def assert_count_stays(self, count, settle=2.0):
        """Checks that exactly count messages arrived and that no more
        arrive within settle seconds (a duplicate or a smuggled copy)."""
        time.sleep(settle)
        got = self.messages
        assert len(got) == count, (
            f"upstream received {len(got)} messages, expected {count}: "
            + ", ".join(f"from=<{m.mail_from}> to={m.rcpt_tos}"
                        for m in got))
        return got


# --------------------------------------------------------------------------
# Daemon configuration

def _libconfig_value(value, indent):
    pad = "  " * (indent + 1)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, dict):
        body = "".join(f"{pad}{key} = {_libconfig_value(val, indent + 1)};\n"
                       for key, val in value.items())
        return "{\n" + body + "  " * indent + "}"
    if isinstance(value, list):
        if all(isinstance(item, dict) for item in value) and value:
            items = ",\n".join(pad + _libconfig_value(item, indent + 1)
                               for item in value)
            return "(\n" + items + "\n" + "  " * indent + ")"
        return "[" + ", ".join(_libconfig_value(item, indent)
                               for item in value) + "]"
    raise TypeError(f"no libconfig form for {value!r}")


def render_config(settings):
    """libconfig text for a dict of settings (groups as dicts, lists of
    groups as lists of dicts, arrays as lists of scalars)."""
    return "".join(f"{key} = {_libconfig_value(value, 0)};\n"
                   for key, value in settings.items())


def merge_settings(base, overrides):
    """A copy of base with overrides merged in, dict by dict; a None value
    removes the key."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_settings(workdir, relay_port, ca_file):
    """A daemon config for tests: loopback TCP on a port the kernel
    picks, a Unix socket and spool in workdir, fast retries, one STARTTLS
    relay to 127.0.0.1:relay_port that trusts ca_file."""
    return {
        "hostname": HOSTNAME,
        "spool": os.path.join(workdir, "spool"),
        "shutdown_timeout": 5,
        "listen": [
            {"address": "127.0.0.1", "port": "0"},
            {"path": os.path.join(workdir, "smtp.sock"), "mode": "0666"},
        ],
        "limits": {"idle_timeout": 60},
        "queue": {"retry_min": 1, "retry_max": 4, "lifetime": "1h",
                  "workers": 2},
        "default_relay": "upstream",
        "relays": {
            "upstream": {
                "type": "smtp",
                "host": "127.0.0.1",
                "port": str(relay_port),
                "tls": "starttls",
                "verify": True,
                "ca_file": ca_file,
                "helo": HOSTNAME,
                "timeout_connect": 5,
                "timeout_command": 10,
                "timeout_data": 60,
            },
        },
    }


# --------------------------------------------------------------------------
# The daemon

# What AddressSanitizer, LeakSanitizer, UBSan and valgrind write when they
# find something (valgrind's lines start with ==PID==, as ASan's do).
CHECKER_REPORT = re.compile(
    r"^==\d+==\s*ERROR: |^SUMMARY: \w+Sanitizer|: runtime error: "
    r"|^==\d+== (Invalid |Conditional jump|Syscall param|Mismatched free"
    r"|Source and destination overlap)"
    r"|^==\d+==\s+(definitely|indirectly) lost: [1-9]"
    r"|^==\d+== ERROR SUMMARY: [1-9]")


def checker_reports(log_text):
    """The lines of a daemon's log in which a sanitizer or valgrind
    reports an error or a leak."""
    return [line for line in log_text.splitlines()
            if CHECKER_REPORT.search(line)]


def wrapper():
    """The command the daemon runs under, from SMARTHOSTD_WRAPPER (e.g.
    "valgrind --error-exitcode=99 --leak-check=full"); empty by default.
    The wrapper must exec the daemon in its own process (valgrind does), so
    that the pid the daemon logs is the one the test started."""
    return shlex.split(os.environ.get("SMARTHOSTD_WRAPPER", ""))


# Ways a daemon run may end that a test chose (Daemon.kill(), its own
# signals) or that the teardown's SIGTERM asks for; any other signal is a
# crash.
EXPECTED_DEATHS = (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)


class Daemon:
    """smarthostd running on a config in its own directory.

    settings is a dict for render_config, or a function that makes one
    from the daemon's work directory. The daemon's stdout and stderr go
    to one log file that survives restarts (a restart appends);
    self.run_start is where the current run's lines begin.
    """

    START_TIMEOUT = 10
    STOP_TIMEOUT = 15

    def __init__(self, binary, settings, name="smarthostd", env=None):
        self.binary = binary
        self.name = name
        self.env = dict(os.environ, **(env or {}))
        self.workdir = tempfile.mkdtemp(prefix="shd-")
        self.settings = settings(self.workdir) if callable(settings) \
            else settings
        self.config_path = os.path.join(self.workdir, "smarthostd.conf")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(render_config(self.settings))
        self.log_path = os.path.join(self.workdir, "smarthostd.log")
        self.proc = None
        self.port = None
        self.unix_path = None
        self.run_start = 0
        self._final_log = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        """Starts the daemon and waits for "started, pid=" and the
        listener lines of this run."""
        assert self.proc is None or self.proc.poll() is not None
        self.run_start = (os.path.getsize(self.log_path)
                          if os.path.exists(self.log_path) else 0)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*wrapper(), self.binary, "-c", self.config_path, "-d"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.workdir, env=self.env)

        def started():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"smarthostd exited with {self.proc.returncode} "
                    "during start-up")
            return re.search(r"started, pid=(\d+)", self.log(self.run_start))

        match = wait_until(started, self.START_TIMEOUT,
                           "smarthostd to log 'started, pid='")
        assert int(match.group(1)) == self.proc.pid
        text = self.log(self.run_start)
        tcp = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        unix = re.search(r"listening on unix:(\S+)", text)
        assert tcp, "no 'listening on 127.0.0.1:PORT' line"
        assert unix, "no 'listening on unix:PATH' line"
        self.port = int(tcp.group(1))
        self.unix_path = unix.group(1)
        assert self.port != 0
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum):
        self.proc.send_signal(signum)

    def flush(self):
        """Asks for an immediate delivery attempt of the whole queue."""
        self.signal(signal.SIGUSR1)

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM; returns the exit status, or fails the test (after a
        SIGKILL) if the daemon does not exit in time."""
        self.proc.terminate()
        try:
            return self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"smarthostd still running {scaled(timeout):g} s after "
                "SIGTERM")

    def kill(self):
        """SIGKILL, as a crash would."""
        self.proc.kill()
        self.proc.wait(scaled(self.STOP_TIMEOUT))

    def close(self):
        """Stops the daemon if it runs, keeps its log in memory, removes
        its directory. Never raises; returns what went wrong, for the
        fixture to fail the test with: a SIGTERM the daemon did not
        obey in time or answered with a non-zero exit (a crash at
        shutdown), or a run that died of a signal nobody sent (a crash
        the test did not look at). None when all is well."""
        problem = None
        if self.running():
            try:
                status = self.terminate()
            except AssertionError as e:
                status = None
                problem = str(e)
            if status is not None and status != 0:
                problem = (f"{self.name} exited with status {status} "
                           "after SIGTERM at teardown")
        elif (self.proc is not None and self.proc.returncode is not None
              and self.proc.returncode < 0
              and self.proc.returncode not in EXPECTED_DEATHS):
            problem = (f"{self.name} died of signal "
                       f"{-self.proc.returncode} during the test")
        self._final_log = self._read_log()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problem

    def _read_log(self):
        if self._final_log is not None:
            return self._final_log
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def log_bytes(self, since=0):
        """The log from byte offset since, as the daemon wrote it; while
        it runs, whole lines only. Its write(2) of a line that crosses a
        page of the file can be read half done (the first page's part
        visible, the rest not yet), and a pattern that matches such a
        head, or a pid or port cut short, must wait for the rest."""
        data = self._read_log()[since:]
        if self._final_log is None and self.running():
            data = data[:data.rfind(b"\n") + 1]
        return data

    def log(self, since=0):
        """The log text from byte offset since (whole lines only while
        the daemon runs, as log_bytes())."""
        return self.log_bytes(since).decode("utf-8", errors="replace")

    def wait_log(self, pattern, timeout=10, since=0):
        """Waits until pattern (a regex) matches a log line; returns the
        match."""
        __tracebackhide__ = True
        regex = re.compile(pattern, re.MULTILINE)

        def found():
            match = regex.search(self.log(since))
            if match is None and not self.running():
                raise AssertionError(
                    f"smarthostd exited ({self.proc.returncode}) before "
                    f"logging /{pattern}/")
            return match

        return wait_until(found, timeout, f"log line /{pattern}/")

    def log_lines(self, pattern, since=0):
        regex = re.compile(pattern)
        return [line for line in self.log(since).splitlines()
                if regex.search(line)]

    def vmhwm_kib(self):
        """Peak resident set size (VmHWM) in KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/PID/status")


def delivery_line(qid, rcpt, status):
    """Regex for the relay's log line of one recipient's outcome."""
    return (rf"{qid}: to=<{re.escape(rcpt)}>, relay=\S+, .*"
            rf"status={status}\b")


# --------------------------------------------------------------------------
# Messages

def make_message(subject, body, sender="a@example.org",
                 recipient="b@example.net"):
    """A complete RFC 5322 message with CRLF line ends. body is str or
    bytes with CRLF line ends already. Date and Message-ID are present
    so a relay has no reason to add headers below its Received."""
    if isinstance(body, str):
        body = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    msgid = base64.b32encode(os.urandom(10)).decode().lower()
    head = (f"From: <{sender}>\r\n"
            f"To: <{recipient}>\r\n"
            f"Subject: {subject}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{msgid}@{CLIENT_HOSTNAME}>\r\n"
            "\r\n").encode()
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head + body


def random_body(size):
    """About size bytes of base64 text in 76-column CRLF lines."""
    raw = os.urandom(size * 3 // 4)
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")


def assert_relayed(relayed, sent):
    """The upstream's copy is what the client sent, byte for byte, below
    one or more header lines that start with smarthostd's Received."""
    content = relayed.content
    assert content.endswith(sent), (
        "relayed message differs from the submitted one "
        f"(sent {len(sent)} bytes, relayed {len(content)})")
    added = content[:len(content) - len(sent)]
    assert added.startswith(b"Received: "), (
        f"relayed message does not start with a Received header: "
        f"{content[:200]!r}")
    assert b"\r\n\r\n" not in added
    received = added.split(b"\r\n")[0]
    assert b"by " + HOSTNAME.encode() in added, (
        f"Received header does not name {HOSTNAME}: {received!r}")


# --------------------------------------------------------------------------
# Clients

class UnixSMTP(smtplib.SMTP):
    """smtplib over a Unix stream socket."""

    def __init__(self, path, timeout=10):
        self._path = path
        super().__init__(local_hostname=CLIENT_HOSTNAME,
                         timeout=scaled(timeout))

    def connect(self, host=None, port=0, source_address=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.file = None
        self.sock.connect(self._path)
        return self.getreply()


def smtp_client(daemon, via="tcp", timeout=10):
    """An smtplib client connected to the daemon, greeting read, EHLO
    done; timeout (scaled) bounds each reply."""
    if via == "tcp":
        client = smtplib.SMTP("127.0.0.1", daemon.port,
                              local_hostname=CLIENT_HOSTNAME,
                              timeout=scaled(timeout))
    else:
        client = UnixSMTP(daemon.unix_path, timeout=timeout)
        code, _ = client.connect()
        assert code == 220
    code, _ = client.ehlo()
    assert code == 250
    return client


def submit(client, sender, recipients, message):
    """One transaction over an smtplib client; returns the queue id from
    the 250 reply to the end of DATA."""
    code, reply = client.mail(sender)
    assert code == 250, f"MAIL: {code} {reply!r}"
    for rcpt in recipients:
        code, reply = client.rcpt(rcpt)
        assert code == 250, f"RCPT {rcpt}: {code} {reply!r}"
    code, reply = client.data(message)
    text = reply.decode(errors="replace")
    assert code == 250, f"end of DATA: {code} {text}"
    return queue_id(text)


def queue_id(reply_text):
    match = QUEUE_ID_RE.search(reply_text)
    assert match, f"no 'queued as <16 hex digits>' in {reply_text!r}"
    return match.group(1)


def send_message(daemon, message, sender="a@example.org",
                 recipients=("b@example.net",), via="tcp", timeout=10):
    """Connects, submits one message, QUITs; returns its queue id."""
    client = smtp_client(daemon, via=via, timeout=timeout)
    try:
        return submit(client, sender, recipients, message)
    finally:
        client.quit()


@dataclass
class Reply:
    code: int
    lines: list = field(default_factory=list)

    @property
    def text(self):
        return "\n".join(self.lines)


class RawSMTP:
    """A line-level SMTP client for what smtplib will not send:
    pipelined groups, overlong lines, bare line feeds."""

    MAX_LINE = 65536

    def __init__(self, port=None, path=None, timeout=10):
        timeout = scaled(timeout)
        if path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port),
                                                 timeout=timeout)
        self._buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _readline(self):
        while b"\r\n" not in self._buf:
            if len(self._buf) > self.MAX_LINE:
                raise AssertionError("reply line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(
                    f"connection closed (pending {self._buf!r})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", errors="replace")

    def reply(self):
        """Reads one (possibly multi-line) reply."""
        lines = []
        while True:
            line = self._readline()
            assert re.match(r"\d{3}[ -]|\d{3}$", line), \
                f"malformed reply line {line!r}"
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), lines)

    def command(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def greet(self):
        """Reads the greeting and sends EHLO; returns the EHLO reply."""
        greeting = self.reply()
        assert greeting.code == 220, greeting
        ehlo = self.command(f"EHLO {CLIENT_HOSTNAME}")
        assert ehlo.code == 250, ehlo
        return ehlo

    def begin_data(self, sender="a@example.org",
                   recipients=("b@example.net",)):
        """MAIL, RCPT and DATA one by one, each expected to succeed."""
        reply = self.command(f"MAIL FROM:<{sender}>")
        assert reply.code == 250, f"MAIL: {reply}"
        for rcpt in recipients:
            reply = self.command(f"RCPT TO:<{rcpt}>")
            assert reply.code == 250, f"RCPT: {reply}"
        reply = self.command("DATA")
        assert reply.code == 354, f"DATA: {reply}"

    def wait_closed(self, timeout=5):
        """Reads until the server closes the connection; returns what
        came before the close, or fails after timeout seconds (scaled)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        data, self._buf = self._buf, b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"connection still open after {timeout:g} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            except socket.timeout:
                continue
            if not chunk:
                return data
            data += chunk


def dsn_recipient_fields(report):
    """The per-recipient field groups of a multipart/report DSN, each a
    dict with lower-case field names."""
    groups = []
    for part in report.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in part.get_payload():
            fields = {k.lower(): v.strip() for k, v in block.items()}
            if "final-recipient" in fields:
                groups.append(fields)
    return groups


# --------------------------------------------------------------------------
# Other ways to start the daemon, and systemd's notification socket
# (test_daemon.py)

SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


def daemon_spawn(daemon, prefix=(), env=None):
    """Starts daemon's binary on its config as Daemon.start() does (same
    log file, directory and arguments), but behind the command prefix
    (e.g. systemd-socket-activate and its options) and with env as its
    environment, and without waiting for anything. Sets daemon.proc and
    daemon.run_start, so daemon.close() stops it like any other run."""
    assert daemon.proc is None or daemon.proc.poll() is not None
    daemon.run_start = (os.path.getsize(daemon.log_path)
                        if os.path.exists(daemon.log_path) else 0)
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(
            [*prefix, *wrapper(), daemon.binary, "-c", daemon.config_path,
             "-d"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=daemon.workdir, env=env)
    return daemon.proc


# unshare and nsenter as root, or in an unprivileged user namespace.
NETNS_USER = [] if os.geteuid() == 0 else ["--map-root-user"]


def daemon_spawn_in_netns(daemon, addresses=()):
    """daemon_spawn() in a network namespace of its own, whose loopback
    device is up and also carries each of addresses (IPv4, as /32): other
    networks' clients, on loopback."""
    setup = "".join(f" && ip addr add {a}/32 dev lo" for a in addresses)
    return daemon_spawn(daemon, prefix=[
        "unshare", "--net", *NETNS_USER, "sh", "-c",
        f'ip link set lo up{setup} && exec "$@"', "sh"])


def netns_run(daemon, argv):
    """Runs argv in the network namespace of a daemon started by
    daemon_spawn_in_netns(); returns the CompletedProcess (text)."""
    enter = ["nsenter", "--target", str(daemon.pid), "--net"]
    if NETNS_USER:
        enter += ["--user", "--preserve-credentials"]
    return subprocess.run([*enter, *argv], capture_output=True, text=True,
                          timeout=30)


def daemon_wait_started(daemon, timeout=Daemon.START_TIMEOUT):
    """Waits for this run's "started, pid=" line (the pid must be the
    process daemon.proc runs); returns the "listening on" addresses of
    this run, in log order."""
    __tracebackhide__ = True

    def started():
        if daemon.proc.poll() is not None:
            raise AssertionError(
                f"smarthostd exited with {daemon.proc.returncode} during "
                f"start-up:\n{daemon.log(daemon.run_start)}")
        return re.search(r"started, pid=(\d+)", daemon.log(daemon.run_start))

    match = wait_until(started, timeout, "smarthostd to log 'started, pid='")
    assert int(match.group(1)) == daemon.proc.pid
    return re.findall(r"listening on (\S+)", daemon.log(daemon.run_start))


def daemon_dropping_to(daemon_factory, relay_port, ca_cert, user,
                       **overrides):
    """A daemon (not started) that drops privileges to user: its work
    directory searchable and the relay's CA file copied into it, since
    the TLS settings are checked after the drop."""
    daemon = daemon_factory(relay_port, start=False, user=user,
                            relays={"upstream": {"ca_file": "ca.pem"}},
                            **overrides)
    os.chmod(daemon.workdir, 0o755)
    shutil.copyfile(ca_cert, os.path.join(daemon.workdir, "ca.pem"))
    return daemon


def rewrite_config(daemon, text):
    """Replaces the daemon's config file with text, atomically."""
    tmp = daemon.config_path + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, daemon.config_path)


def ehlo_size(port):
    """The SIZE value the daemon announces to a new EHLO on port, or
    None if it announces no SIZE."""
    with RawSMTP(port) as smtp:
        ehlo = smtp.greet()
        smtp.command("QUIT")
    for line in ehlo.lines:
        words = line.split()
        if words and words[0].upper() == "SIZE":
            return int(words[1]) if len(words) > 1 else 0
    return None


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET:
    records every sd_notify() message it receives, in order."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received = []   # one dict of fields per datagram

    def close(self):
        self.sock.close()

    def next(self, timeout):
        """The next datagram's fields (a dict), or None after timeout s."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        fields = {}
        for line in data.decode("utf-8", errors="replace").split("\n"):
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key] = value
        self.received.append(fields)
        return fields

    def wait_for(self, key, value, timeout=10):
        """Reads datagrams until one carries key=value; returns its
        fields. Fails after timeout seconds, listing what came."""
        __tracebackhide__ = True
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            fields = self.next(remaining) if remaining > 0 else None
            if fields is None:
                raise AssertionError(
                    f"no {key}={value} notification within {timeout:g} s; "
                    f"received {self.received}")
            if fields.get(key) == value:
                return fields
