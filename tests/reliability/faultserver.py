"""An SMTP upstream that misbehaves on purpose (test_upstream_faults.py).

FaultServer listens on 127.0.0.1 and handles each connection by its mode
at accept time: "good" forwards the connection byte for byte to a real
upstream (aiosmtpd, STARTTLS included); every other mode is one fault.
Messages a faulty session received in full (up to the final dot) are kept
in `swallowed`: an upstream that took the data and then failed may have
delivered it, so they count towards duplicates.
"""

import socket
import ssl
import threading
import time

from harness import server_tls_context

FAULTS = ("close_mid_data", "close_after_dot", "greet_421", "stall_silent",
          "stall_trickle", "stall_mid_data", "endless_multiline", "no_crlf",
          "tls_garbage", "tls_expired", "tls_wrong_host")

# How long a stalling session is kept up at most (the daemon should give
# up long before).
STALL_LIMIT = 120


class Dialogue:
    """The server side of an SMTP session on a socket (plain or TLS)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def data(self):
        """Reads message data up to and including the final dot."""
        while b"\r\n.\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed in DATA")
            self.buf += chunk
        data, self.buf = self.buf.split(b"\r\n.\r\n", 1)
        return data + b"\r\n"


class FaultServer:
    def __init__(self, upstream_port, good_pair, expired_pair, misnamed_pair):
        self.upstream_port = upstream_port
        self.mode = "good"
        self.contexts = {"good": server_tls_context(good_pair),
                         "tls_expired": server_tls_context(expired_pair),
                         "tls_wrong_host": server_tls_context(misnamed_pair)}
        self.swallowed = []
        self.sessions = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def close(self):
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            mode = self.mode
            with self._lock:
                self.sessions[mode] = self.sessions.get(mode, 0) + 1
            t = threading.Thread(target=self._serve, args=(conn, mode),
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn, mode):
        conn.settimeout(STALL_LIMIT)
        try:
            if mode == "good":
                self._proxy(conn)
            else:
                getattr(self, "_" + mode)(conn)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _proxy(self, conn):
        up = socket.create_connection(("127.0.0.1", self.upstream_port), 10)
        up.settimeout(STALL_LIMIT)

        def pump(a, b):
            try:
                while True:
                    chunk = a.recv(65536)
                    if not chunk:
                        break
                    b.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(STALL_LIMIT)
        up.close()

    # -- a well-behaved session up to a point
    def _session(self, conn, tls_mode="good", until="data"):
        """Greets, does EHLO and STARTTLS (with the certificate of
        tls_mode), MAIL and RCPT, and returns the Dialogue when the client
        sends DATA (until="data") or when STARTTLS was answered
        (until="starttls")."""
        d = Dialogue(conn)
        d.send(b"220 fault.test ESMTP\r\n")
        while True:
            line = d.line()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                d.send(b"250-fault.test\r\n250-PIPELINING\r\n"
                       b"250-8BITMIME\r\n250 STARTTLS\r\n")
            elif verb == b"STAR":
                d.send(b"220 2.0.0 go ahead\r\n")
                if until == "starttls":
                    return d
                d = Dialogue(self.contexts[tls_mode].wrap_socket(
                    conn, server_side=True))
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                d.send(b"250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                d.send(b"354 go ahead\r\n")
                return d
            elif verb == b"QUIT":
                d.send(b"221 bye\r\n")
                raise ConnectionError("quit")
            else:
                d.send(b"502 5.5.2 what\r\n")

    # -- the faults
    def _close_mid_data(self, conn):
        d = self._session(conn)
        while len(d.buf) < 100:
            chunk = d.sock.recv(65536)
            if not chunk:
                break
            d.buf += chunk

    def _close_after_dot(self, conn):
        d = self._session(conn)
        data = d.data()
        with self._lock:
            self.swallowed.append(data)

    def _greet_421(self, conn):
        conn.sendall(b"421 4.3.2 fault.test busy, try later\r\n")

    def _hold(self, conn):
        deadline = time.monotonic() + STALL_LIMIT
        while time.monotonic() < deadline and not self._stop.is_set():
            conn.settimeout(1)
            try:
                if not conn.recv(65536):
                    return
            except socket.timeout:
                continue

    def _stall_silent(self, conn):
        self._hold(conn)

    def _stall_trickle(self, conn):
        # An endless greeting, one byte a second.
        text = b"220-fault.test this line never ends " * 1000
        for i in range(min(len(text), STALL_LIMIT)):
            if self._stop.is_set():
                return
            conn.sendall(text[i:i + 1])
            time.sleep(1)

    def _stall_mid_data(self, conn):
        # Answers DATA with 354 and then reads nothing more: once the
        # socket buffers are full, the client's writes of a large body
        # block. The receive buffer is made small so that they fill
        # early; the connection is held open, unread.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Kept: the session's TLS socket closes when it is collected.
        d = self._session(conn)
        deadline = time.monotonic() + STALL_LIMIT
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)
        d.sock.close()

    def _endless_multiline(self, conn):
        d = Dialogue(conn)
        d.send(b"220 fault.test ESMTP\r\n")
        d.line()
        chunk = b"250-fault.test endless extension list\r\n" * 100
        deadline = time.monotonic() + STALL_LIMIT
        while time.monotonic() < deadline and not self._stop.is_set():
            conn.sendall(chunk)

    def _no_crlf(self, conn):
        conn.sendall(b"220 fault.test ESMTP without a line end")
        self._hold(conn)

    def _tls_garbage(self, conn):
        d = self._session(conn, until="starttls")
        conn.recv(65536)     # the client's hello
        d.send(b"this is not a TLS server hello\r\n" * 10)

    def _tls_expired(self, conn):
        self._session(conn, tls_mode="tls_expired")

    def _tls_wrong_host(self, conn):
        self._session(conn, tls_mode="tls_wrong_host")
