"""The daemon as systemd and an administrator see it: socket activation,
readiness notification, privilege drop, the loopback-only rule, reload on
SIGHUP and recovery of a damaged spool at start."""

import errno
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import stat

import pytest

from harness import (CLIENT_HOSTNAME, EX_CONFIG, SOCKET_ACTIVATE, RawSMTP,
                     assert_relayed, daemon_spawn, daemon_wait_started,
                     delivery_line, ehlo_size, free_port, make_message,
                     merge_settings, random_body, render_config,
                     rewrite_config, scaled, send_message, submit,
                     wait_until)

SENDER = "a@example.org"
RCPT = "b@example.net"


def port_refuses(port, host="127.0.0.1"):
    """True if nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == errno.ECONNREFUSED


def log_size(daemon):
    """The daemon log's length in bytes: a since= offset for what comes
    next."""
    return os.path.getsize(daemon.log_path)


# --------------------------------------------------------------------------
# systemd socket activation

def test_socket_activation(upstream, daemon_factory):
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        pytest.skip(f"{SOCKET_ACTIVATE} missing (Debian package systemd)")
    configured = free_port()
    # The config names its own TCP port and a Unix socket (relative to the
    # daemon's directory); both must be ignored in favour of the socket
    # systemd passes.
    daemon = daemon_factory(upstream.port, start=False, listen=[
        {"address": "127.0.0.1", "port": str(configured)},
        {"path": "configured.sock", "mode": "0666"}])
    unix_path = os.path.join(daemon.workdir, "configured.sock")
    activated = free_port()
    # Without --accept, systemd-socket-activate listens, and on the first
    # connection execs the daemon (same pid) with the listening socket as
    # fd 3 (LISTEN_FDS=1); that first connection waits in the backlog.
    daemon_spawn(daemon, prefix=[SOCKET_ACTIVATE, "-l",
                                 f"127.0.0.1:{activated}"])

    def connected():
        if daemon.proc.poll() is not None:
            raise AssertionError(
                f"exited with {daemon.proc.returncode}:\n{daemon.log()}")
        try:
            return socket.create_connection(("127.0.0.1", activated),
                                            timeout=10)
        except ConnectionRefusedError:
            return None

    sock = wait_until(connected, 10, "systemd-socket-activate to listen")
    client = smtplib.SMTP(local_hostname=CLIENT_HOSTNAME, timeout=10)
    client.sock = sock
    try:
        listening = daemon_wait_started(daemon)
        assert listening == [f"127.0.0.1:{activated}"], (
            f"expected to listen on the activated socket only, got "
            f"{listening}")
        assert port_refuses(configured), (
            f"the configured port {configured} is bound too")
        assert not os.path.exists(unix_path), (
            "the configured Unix socket was created too")
        code, _ = client.getreply()
        assert code == 220, "no greeting on the activated socket"
        code, _ = client.ehlo()
        assert code == 250
        message = make_message("socket activation", "Via fd 3.\n")
        qid = submit(client, SENDER, [RCPT], message)
        client.quit()
    finally:
        client.close()
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    assert daemon.terminate() == 0


# --------------------------------------------------------------------------
# sd_notify

def test_sd_notify(upstream, daemon_factory, notify_socket):
    daemon = daemon_factory(upstream.port, start=False)
    daemon_spawn(daemon, env=dict(os.environ,
                                  NOTIFY_SOCKET=notify_socket.path))
    ready = notify_socket.wait_for("READY", "1", timeout=10)

    # READY=1 must come after the listeners are up: at the moment it is
    # received the listening lines are in the log and the port accepts.
    text = daemon.log(daemon.run_start)
    tcp = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
    assert tcp, f"READY=1 before 'listening on 127.0.0.1:PORT':\n{text}"
    assert re.search(r"listening on unix:", text), text
    with RawSMTP(int(tcp.group(1))) as smtp:
        assert smtp.reply().code == 220
    assert ready.get("STATUS"), f"READY=1 without STATUS=: {ready}"
    if "MAINPID" in ready:
        assert ready["MAINPID"] == str(daemon.pid)
    daemon_wait_started(daemon)
    daemon.port = int(tcp.group(1))

    # Reload: RELOADING=1, then READY=1 again once the new config is in.
    since = log_size(daemon)
    daemon.signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", "1", timeout=10)
    notify_socket.wait_for("READY", "1", timeout=10)
    daemon.wait_log(r"\breloaded\b", since=since)

    # Still serving after the reload.
    qid = send_message(daemon, make_message("after reload", "Hi.\n"))
    upstream.wait_messages(1)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))

    daemon.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING", "1", timeout=10)
    assert daemon.proc.wait(scaled(15)) == 0
    readies = [f for f in notify_socket.received if f.get("READY") == "1"]
    assert len(readies) == 2, (
        f"expected READY=1 at start and after reload only: "
        f"{notify_socket.received}")


# --------------------------------------------------------------------------
# Privilege drop

def test_privilege_drop(upstream, daemon_factory, pki):
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs root: smarthostd only changes "
                    "user when started as root")
    nobody = pwd.getpwnam("nobody")
    # The spool (relative to the daemon's directory) exists already, owned
    # by root and private: the daemon must hand it to its user before
    # dropping privileges, or no mail can be queued. The directories above
    # it are traversable by everyone. The CA file is read at each
    # connection, after the drop, so it must be readable by nobody too
    # (the PKI's directory is not).
    daemon = daemon_factory(upstream.port, start=False, user="nobody",
                            spool="spool-parent/spool",
                            relays={"upstream": {"ca_file": "ca.pem"}})
    os.chmod(daemon.workdir, 0o755)   # mkdtemp made it 0700
    shutil.copyfile(pki.good.ca_cert, os.path.join(daemon.workdir, "ca.pem"))
    parent = os.path.join(daemon.workdir, "spool-parent")
    os.mkdir(parent, 0o755)
    spool = os.path.join(parent, "spool")
    os.mkdir(spool, 0o700)
    assert os.stat(spool).st_uid == 0
    daemon.start()

    with open(f"/proc/{daemon.pid}/status", encoding="ascii") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f
                      if ":\t" in line)
    uids = [int(v) for v in status["Uid"].split()]
    gids = [int(v) for v in status["Gid"].split()]
    groups = [int(v) for v in status["Groups"].split()]
    assert uids == [nobody.pw_uid] * 4, f"Uid: {status['Uid']}"
    assert gids == [nobody.pw_gid] * 4, f"Gid: {status['Gid']}"
    assert 0 not in groups, f"still in group root: {status['Groups']}"
    assert os.stat(spool).st_uid == nobody.pw_uid

    message = make_message("as nobody", "Queued by an unprivileged daemon.\n")
    qid = send_message(daemon, message)
    unix_message = make_message("as nobody, Unix socket", "Also queued.\n")
    unix_qid = send_message(daemon, unix_message, via="unix")
    got = upstream.wait_messages(2)
    by_subject = {m.parsed()["Subject"]: m for m in got}
    assert_relayed(by_subject["as nobody"], message)
    assert_relayed(by_subject["as nobody, Unix socket"], unix_message)
    daemon.wait_log(rf"{qid}: removed")
    daemon.wait_log(rf"{unix_qid}: removed")
    queued = os.listdir(os.path.join(spool, "queue"))
    assert not queued, f"left in the queue: {queued}"

    # A reload reads the config again, now as nobody.
    since = log_size(daemon)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b|reload failed.*", since=since)
    assert not daemon.log_lines("reload failed", since=since), \
        daemon.log(since)
    assert daemon.terminate() == 0


def test_spool_from_root_run_is_handed_to_user(upstream_factory,
                                               daemon_factory, pki):
    """Mail queued by a daemon that ran as root must still be delivered
    after the config gains a user: the whole spool changes hands."""
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs root: smarthostd only changes "
                    "user when started as root")
    nobody = pwd.getpwnam("nobody")
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port, start=False,
                            relays={"upstream": {"ca_file": "ca.pem"}})
    os.chmod(daemon.workdir, 0o755)
    shutil.copyfile(pki.good.ca_cert, os.path.join(daemon.workdir, "ca.pem"))
    daemon.start()
    message = make_message("queued as root", "Then delivered as nobody.\n")
    qid = send_message(daemon, message)
    daemon.wait_log(rf"{qid}: to=<.*status=deferred")
    assert daemon.terminate() == 0

    rewrite_config(daemon, render_config(merge_settings(
        daemon.settings, {"user": "nobody"})))
    daemon.start()
    upstream.start()
    daemon.flush()
    msg, = upstream.wait_messages(1, timeout=15)
    assert_relayed(msg, message)
    daemon.wait_log(rf"{qid}: removed", since=daemon.run_start)
    spool = daemon.settings["spool"]
    if not os.path.isabs(spool):
        spool = os.path.join(daemon.workdir, spool)
    for top, dirs, files in os.walk(spool):
        for name in dirs + files:
            path = os.path.join(top, name)
            assert os.lstat(path).st_uid == nobody.pw_uid, path
    assert daemon.terminate() == 0


# --------------------------------------------------------------------------
# Loopback only, unless allow_networks says otherwise

def local_non_loopback_ipv4():
    """An IPv4 address of this host that is not loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))   # no packet is sent
        except OSError:
            return None
        addr = sock.getsockname()[0]
    return None if ipaddress.ip_address(addr).is_loopback else addr


NON_LOOPBACK = [pytest.param("0.0.0.0", id="any")]
if local_non_loopback_ipv4():
    NON_LOOPBACK.append(pytest.param(local_non_loopback_ipv4(), id="host"))


@pytest.mark.parametrize("address", NON_LOOPBACK)
def test_non_loopback_listener_refused(upstream, daemon_factory, address):
    daemon = daemon_factory(upstream.port, start=False, listen=[
        {"address": "127.0.0.1", "port": "0"},
        {"address": address, "port": "0"}])
    daemon_spawn(daemon)
    wait_until(lambda: daemon.proc.poll() is not None
               or "started, pid=" in daemon.log(), 10,
               "smarthostd to exit or start")
    output = daemon.log()
    assert daemon.proc.poll() == EX_CONFIG, (
        f"exit {daemon.proc.poll()}, expected {EX_CONFIG}:\n{output}")
    assert "allow_networks" in output, output
    assert "started, pid=" not in output, output


def test_non_loopback_listener_with_allow_networks(upstream, daemon_factory):
    allowed = ipaddress.ip_network("10.0.0.0/8")
    daemon = daemon_factory(upstream.port, start=False,
                            listen=[{"address": "0.0.0.0", "port": "0"}],
                            allow_networks=[str(allowed)])
    daemon_spawn(daemon)
    listening = daemon_wait_started(daemon)
    assert len(listening) == 1 and listening[0].startswith("0.0.0.0:"), \
        listening
    daemon.port = int(listening[0].rsplit(":", 1)[1])

    # Loopback clients are always allowed.
    message = make_message("wildcard listener", "From loopback.\n")
    qid = send_message(daemon, message)
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))

    # A client on one of this host's other addresses is checked against
    # allow_networks.
    host = local_non_loopback_ipv4()
    if host is not None:
        with socket.create_connection((host, daemon.port),
                                      timeout=10) as sock:
            first = sock.makefile("rb").readline()
        code = int(first[:3]) if first[:3].isdigit() else first
        if ipaddress.ip_address(host) in allowed:
            assert code == 220, first
        else:
            assert code == 554, first
            daemon.wait_log(rf"reject: connection from {re.escape(host)}\b")
    assert daemon.terminate() == 0


# --------------------------------------------------------------------------
# SIGHUP

def test_reload(upstream, daemon_factory):
    daemon = daemon_factory(upstream.port,
                            limits={"max_message_size": "100K"})
    assert ehlo_size(daemon.port) == 100 * 1024
    big = make_message("500 KB", random_body(500_000))
    assert 100 * 1024 < len(big) < 1024 * 1024

    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        reply = smtp.command(f"MAIL FROM:<{SENDER}> SIZE={len(big)}")
        assert reply.code == 552, f"MAIL with SIZE over the limit: {reply}"
    client = smtplib.SMTP("127.0.0.1", daemon.port,
                          local_hostname=CLIENT_HOSTNAME, timeout=20)
    try:
        assert client.ehlo()[0] == 250
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(RCPT)[0] == 250
        code, reply = client.data(big)
    finally:
        client.close()
    assert code == 552, f"500 KB message under a 100K limit: {code} {reply!r}"

    since = log_size(daemon)
    good = render_config(merge_settings(
        daemon.settings, {"limits": {"max_message_size": "1M"}}))
    rewrite_config(daemon, good)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"\breloaded\b", since=since)
    assert ehlo_size(daemon.port) == 1024 * 1024
    qid = send_message(daemon, big, timeout=20)
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, big)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))

    # A broken file: the reload fails with file:line, the daemon keeps
    # running on the config it had.
    broken = good + "queue_typo = ;\n"
    bad_line = len(broken.splitlines())
    rewrite_config(daemon, broken)
    since = log_size(daemon)
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_log(r"reload failed.*", since=since)
    assert f"{daemon.config_path}:{bad_line}" in failed.group(0), (
        f"no {daemon.config_path}:{bad_line} in {failed.group(0)!r}")
    assert daemon.running()
    assert ehlo_size(daemon.port) == 1024 * 1024
    qid = send_message(daemon, big, timeout=20)
    upstream.wait_messages(2)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    assert daemon.terminate() == 0


# --------------------------------------------------------------------------
# Spool recovery

def test_corrupt_spool_files_moved_aside(upstream_factory, daemon_factory):
    upstream = upstream_factory(start=False)
    # Every message in a file of its own: this damages the file format
    # (test_queue damages the log's).
    daemon = daemon_factory(upstream.port, spool_log_max=0)
    message = make_message("survives a damaged spool", random_body(8000))
    qid = send_message(daemon, message)
    daemon.wait_log(delivery_line(qid, RCPT, "deferred"))
    assert daemon.terminate() == 0

    spool = daemon.settings["spool"]
    queue_dir = os.path.join(spool, "queue")
    corrupt_dir = os.path.join(spool, "corrupt")
    with open(os.path.join(queue_dir, qid), "rb") as f:
        content = f.read()
    # The copy becomes message 0000000000000001 in its envelope too (the
    # envelope is text before the body; the 64-byte preamble gives the
    # body's offset and size), so that only the cut makes it corrupt.
    truncated, garbage = "0000000000000001", "0000000000000002"
    preamble = content[:64].split()
    assert preamble[:2] == [b"smarthostd-spool", b"1"], content[:64]
    body_offset, body_size = int(preamble[2], 16), int(preamble[3], 16)
    assert body_size >= len(message) > 8000
    envelope = content[64:body_offset]
    assert envelope.count(qid.encode()) == 1, envelope
    copy = (content[:64] + envelope.replace(qid.encode(), truncated.encode())
            + content[body_offset:body_offset + body_size // 2])
    with open(os.path.join(queue_dir, truncated), "wb") as f:
        f.write(copy)
    with open(os.path.join(queue_dir, garbage), "wb") as f:
        f.write(os.urandom(3000))
    with open(os.path.join(queue_dir, "not-an-id"), "wb") as f:
        f.write(b"stray file\n")

    upstream.start()
    daemon.start()
    for name in (truncated, garbage, "not-an-id"):
        daemon.wait_log(rf"{name}: moved to corrupt/", since=daemon.run_start)
        assert os.path.exists(os.path.join(corrupt_dir, name)), name
        assert not os.path.exists(os.path.join(queue_dir, name)), name
    moved, = daemon.log_lines(rf"{truncated}: moved to corrupt/",
                              since=daemon.run_start)
    assert "does not match" not in moved, moved
    with open(os.path.join(corrupt_dir, truncated), "rb") as f:
        assert f.read() == copy, "the truncated file was changed"

    msg, = upstream.wait_messages(1, timeout=15)
    assert_relayed(msg, message)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"), since=daemon.run_start)
    daemon.wait_log(rf"{qid}: removed", since=daemon.run_start)
    upstream.assert_count_stays(1, settle=1)
    assert daemon.running()
    assert daemon.terminate() == 0


def test_spool_log_survives_a_crash_and_a_torn_tail(upstream_factory,
                                                     daemon_factory):
    """Small messages live in the spool log. After a SIGKILL, with a torn
    record after the last one the daemon wrote (what a power cut during an
    append leaves), both messages are found again and delivered once
    each, and a restart after that brings nothing back."""
    upstream = upstream_factory(start=False)
    daemon = daemon_factory(upstream.port)
    messages = [make_message(f"log {i}", random_body(3000)) for i in (1, 2)]
    qids = [send_message(daemon, m) for m in messages]
    for qid in qids:
        daemon.wait_log(delivery_line(qid, RCPT, "deferred"))
    spool = daemon.settings["spool"]
    assert os.listdir(os.path.join(spool, "queue")) == []
    daemon.kill()

    logdir = os.path.join(spool, "log")
    newest = os.path.join(logdir, max(os.listdir(logdir)))
    with open(newest, "r+b") as f:
        end = len(f.read().rstrip(b"\0"))
        f.seek(end)
        f.write(b"SHLG\x01\x00\x00\x00" + os.urandom(200))
    upstream.start()
    daemon.start()
    daemon.flush()
    got = upstream.wait_messages(2, timeout=30)
    by_subject = {m.parsed()["Subject"]: m for m in got}
    assert_relayed(by_subject["log 1"], messages[0])
    assert_relayed(by_subject["log 2"], messages[1])
    for qid in qids:
        daemon.wait_log(rf"{qid}: removed", since=daemon.run_start)
    upstream.assert_count_stays(2, settle=1)
    assert not daemon.log_lines("corrupt", since=daemon.run_start)
    assert daemon.terminate() == 0
    # Restarted once more, nothing comes back.
    daemon.start()
    upstream.assert_count_stays(2, settle=1)
    assert daemon.terminate() == 0


def test_core_dumps_disabled(daemon):
    """Credentials live in the daemon's memory: it must not dump core."""
    with open(f"/proc/{daemon.pid}/limits", encoding="ascii") as f:
        core = [line for line in f if line.startswith("Max core file size")]
    assert core, "no core limit line"
    soft, hard = core[0].split()[4:6]
    assert (soft, hard) == ("0", "0"), core[0]


# --------------------------------------------------------------------------
# Journald priority prefixes and the Unix socket's group

def test_log_has_journald_prefixes(daemon, upstream):
    """stderr is a file here, not a terminal: every line carries an
    sd-daemon priority prefix, info lines <6>, and -d's debug lines <7>."""
    qid = send_message(daemon, make_message("prefixes", "Body.\n"))
    upstream.wait_messages(1)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
    log = daemon.log()
    assert re.search(r"^<6>started, pid=\d+$", log, re.M), log[:2000]
    assert re.search(r"^<6>listening on 127\.0\.0\.1:\d+$", log, re.M)
    assert re.search(rf"^<6>{qid}: to=<{re.escape(RCPT)}>, .*status=sent",
                     log, re.M)
    assert re.search(r"^<7>", log, re.M), "no <7> debug line under -d"
    unprefixed = [line for line in log.splitlines()
                  if not re.match(r"<[0-7]>\S", line)]
    assert unprefixed == [], unprefixed[:10]


def socket_group():
    """A group the daemon may give its socket to that is not the one a
    new file gets anyway (the primary group): any group when root,
    else a supplementary group; the primary group only when there is no
    other choice (then the test shows less)."""
    primary = os.getgid()
    if os.geteuid() == 0:
        for name in ("nogroup", "mail", "daemon", "users"):
            try:
                return grp.getgrnam(name)
            except KeyError:
                pass
    for gid in os.getgroups():
        if gid != primary:
            return grp.getgrgid(gid)
    return grp.getgrgid(primary)


def test_unix_socket_group_and_mode(upstream, daemon_factory):
    group = socket_group()
    daemon = daemon_factory(upstream.port, start=False, listen=[
        {"address": "127.0.0.1", "port": "0"},
        {"path": "grouped.sock", "mode": "0660", "group": group.gr_name}])
    daemon.start()
    path = os.path.join(daemon.workdir, "grouped.sock")
    assert daemon.unix_path == "grouped.sock", daemon.unix_path
    daemon.unix_path = path     # relative to the daemon's directory
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert st.st_gid == group.gr_gid, (st.st_gid, group.gr_gid)
    qid = send_message(daemon, make_message("via group socket", "Body.\n"),
                       via="unix")
    upstream.wait_messages(1)
    daemon.wait_log(delivery_line(qid, RCPT, "sent"))
