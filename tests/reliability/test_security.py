"""Security properties, each with a test (the others are named in
doc/RELIABILITY.md): loopback-only listeners by default; clients outside
allow_networks get 554; no capabilities after the privilege drop; the
control socket refuses other users; TLS verification on by default; the
DSNs the daemon writes cannot be used to inject headers.

Tests that need another network or another user run the daemon in a
network namespace of its own (unshare), as root or in an unprivileged
user namespace, or need root (the privilege drop, as test_daemon.py's).
"""

import email
import email.policy
import os
import pwd
import subprocess

import pytest

from harness import (RawSMTP, daemon_dropping_to, daemon_spawn_in_netns,
                     daemon_wait_started, delivery_line, make_message,
                     netns_run, queue_id, render_config, send_message,
                     wait_until)

RCPT = "b@example.net"


def test_default_listeners_are_loopback_only(upstream, daemon_factory):
    """With no listen setting the daemon listens on 127.0.0.1:25 and
    [::1]:25 and nothing else (in a network namespace of its own, so that
    port 25 is free)."""
    daemon = daemon_factory(upstream.port, start=False)
    del daemon.settings["listen"]
    with open(daemon.config_path, "w", encoding="utf-8") as f:
        f.write(render_config(daemon.settings))
    daemon_spawn_in_netns(daemon)
    listening = daemon_wait_started(daemon)
    assert sorted(listening) == ["127.0.0.1:25", "[::1]:25"], listening
    with open(f"/proc/{daemon.pid}/net/tcp", encoding="ascii") as f:
        local = [line.split()[1] for line in f.readlines()[1:]
                 if line.split()[3] == "0A"]          # LISTEN
    assert local == ["0100007F:0019"], local           # 127.0.0.1:25
    with open(f"/proc/{daemon.pid}/net/tcp6", encoding="ascii") as f:
        local6 = [line.split()[1] for line in f.readlines()[1:]
                  if line.split()[3] == "0A"]
    assert local6 == ["00000000000000000000000001000000:0019"], local6


def test_client_outside_allow_list_gets_554(upstream, daemon_factory):
    """A listener on all addresses with allow_networks 10.0.0.0/8: a
    client from 192.0.2.1 (an address added in the daemon's network
    namespace) gets 554 and no session; loopback stays allowed."""
    daemon = daemon_factory(upstream.port, start=False,
                            listen=[{"address": "0.0.0.0", "port": "2525"}],
                            allow_networks=["10.0.0.0/8"])
    daemon_spawn_in_netns(daemon, ["192.0.2.1"])
    daemon_wait_started(daemon)

    def first_line(source):
        script = ("import socket; s = socket.socket(); "
                  f"s.bind(('{source}', 0)); s.settimeout(10); "
                  "s.connect(('192.0.2.1', 2525)); "
                  "print(s.makefile('rb').readline().decode().strip())")
        result = netns_run(daemon, ["/usr/bin/python3", "-c", script])
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    refused = first_line("192.0.2.1")
    assert refused.startswith("554"), refused
    assert first_line("127.0.0.1").startswith("220")
    assert daemon.running()


def _root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root, as test_daemon.py's privilege drop")


def test_no_capabilities_after_drop(upstream, daemon_factory, pki):
    _root_only()
    daemon = daemon_dropping_to(daemon_factory, upstream.port,
                                pki.good.ca_cert, "nobody")
    daemon.start()
    with open(f"/proc/{daemon.pid}/status", encoding="ascii") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f
                      if ":\t" in line)
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[field], 16) == 0, f"{field}: {status[field]}"
    nobody = pwd.getpwnam("nobody")
    assert [int(v) for v in status["Uid"].split()] == [nobody.pw_uid] * 4


# Sends "status" (if the daemon has not hung up yet) and prints what came.
CONTROL_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b"status\\n")
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(4096)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"""


def test_control_socket_refuses_other_users(upstream, daemon_factory):
    """Even when the socket file is open to everyone, a peer that is
    neither root nor the daemon's user gets an error, not an answer."""
    _root_only()
    daemon = daemon_factory(upstream.port)
    path = daemon.settings.get("control_socket") or os.path.join(
        daemon.settings["spool"], "control.sock")
    wait_until(lambda: os.path.exists(path), 10, "the control socket")
    os.chmod(daemon.workdir, 0o755)
    for d in (daemon.settings["spool"], os.path.dirname(path)):
        os.chmod(d, 0o755)
    os.chmod(path, 0o666)
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        ["/usr/bin/python3", "-c", CONTROL_CLIENT, path],
        capture_output=True, text=True,
        timeout=30, user=nobody.pw_uid, group=nobody.pw_gid,
        extra_groups=[])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("error"), result.stdout
    assert "queue" not in result.stdout.lower(), result.stdout


@pytest.mark.parametrize("cert", ["rogue", "misnamed"])
def test_tls_verification_on_by_default(upstream_factory, daemon_factory,
                                        cert):
    """A relay that does not mention verify checks the certificate: an
    unknown CA or another host's name defers the mail."""
    upstream = upstream_factory(tls=cert)
    daemon = daemon_factory(upstream.port, start=False)
    del daemon.settings["relays"]["upstream"]["verify"]
    with open(daemon.config_path, "w", encoding="utf-8") as f:
        f.write(render_config(daemon.settings))
    daemon.start()
    qid = send_message(daemon, make_message("verify default", "Hello.\n"))
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"), timeout=30)
    upstream.assert_count_stays(0, settle=1)


INJECTED = "X-Injected: yes"
RCPT2 = "c@example.net"
# A HELO name the daemon accepts that looks like the start of a header.
HELO_NAME = "X-Injected:"


def test_dsn_cannot_inject_headers(upstream_factory, daemon_factory):
    """CR or LF in addresses and HELO names is refused; an upstream
    reply with header-like lines, or with a bare CR and an escape byte
    inside a line, ends up inside the DSN's text, never as a header of the
    DSN or of its parts. The HELO name the message came with is in the
    DSN's copy of its headers, on its Received: line."""
    upstream = upstream_factory(rcpt_replies={
        RCPT: f"550-{INJECTED}\r\n550-\r\n550 5.1.1 {INJECTED}",
        RCPT2: f"550 5.1.1 bad\r{INJECTED}\x1b[31m"})
    daemon = daemon_factory(upstream.port)
    with RawSMTP(daemon.port) as smtp:
        assert smtp.reply().code == 220
        assert smtp.command(f"EHLO a\r{INJECTED}").code == 501
        assert smtp.command("EHLO client.test").code == 250
        for line in (f'MAIL FROM:<"a\\\r{INJECTED}"@example.org>',
                     f"MAIL FROM:<a@example.org\r{INJECTED}>"):
            assert smtp.command(line).code in (501, 553), line
        assert smtp.command("MAIL FROM:<a@example.org>").code == 250
        assert smtp.command(
            f'RCPT TO:<"b\\\r{INJECTED}"@example.net>').code in (501, 553)
        # A bare LF may end a command line: each piece must be refused.
        smtp.send(f'RCPT TO:<"b\\\n{INJECTED}"@example.net>\r\n'
                  "NOOP\r\n".encode())
        codes = []
        while not codes or codes[-1] != 250:
            codes.append(smtp.reply().code)
        assert all(500 <= c < 600 for c in codes[:-1]), codes
        smtp.command("QUIT")
    with RawSMTP(daemon.port) as smtp:
        assert smtp.reply().code == 220
        assert smtp.command(f"EHLO {HELO_NAME}").code == 250
        assert smtp.command("MAIL FROM:<a@example.org>").code == 250
        assert smtp.command(f"RCPT TO:<{RCPT}>").code == 250
        assert smtp.command(f"RCPT TO:<{RCPT2}>").code == 250
        assert smtp.command("DATA").code == 354
        smtp.send(make_message("bounce me", "Body.\n") + b".\r\n")
        qid = queue_id(smtp.reply().text)
        smtp.command("QUIT")
    daemon.wait_log(delivery_line(qid, RCPT, "bounced"), timeout=30)
    daemon.wait_log(delivery_line(qid, RCPT2, "bounced"), timeout=30)
    dsn = wait_until(lambda: next((m for m in upstream.messages
                                   if m.mail_from == ""), None),
                     30, "the DSN at the upstream")
    parsed = email.message_from_bytes(dsn.content,
                                      policy=email.policy.compat32)
    for part in parsed.walk():
        assert part.get("X-Injected") is None, part.as_string()[:2000]
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():
                assert block.get("X-Injected") is None, str(block)
    for line in dsn.content.split(b"\r\n"):
        assert not line.startswith(INJECTED.encode()), dsn.content[:3000]
    assert b"\x1b" not in dsn.content, "a raw escape byte in the DSN"
    received = [line for line in dsn.content.split(b"\r\n")
                if line.startswith(b"Received: from " + HELO_NAME.encode())]
    assert received, "the HELO name is not on the copy's Received: line"
    assert b"\n" not in dsn.content.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in dsn.content.replace(b"\r\n", b""), "bare CR"
