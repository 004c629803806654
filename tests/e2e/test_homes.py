"""The daemon in its homes: the system service's sysusers.d/tmpfiles.d
snippets and units, the watchdog and STATUS= it sends systemd, and the stop
of a daemon that dropped privileges."""

import os
import pwd
import re
import shutil
import subprocess

import pytest

from harness import (daemon_spawn, daemon_wait_started, make_message,
                     send_message)
from localuser import require_root

TOP_SRCDIR = os.environ.get(
    "TOP_SRCDIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SYSTEMD_DIR = os.path.abspath(os.path.join(TOP_SRCDIR, "systemd"))


def run(*argv):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}"
        f"{done.stderr}")
    return done


def root_entries(root, name):
    """{name: fields} of root's /etc/NAME (passwd or group)."""
    with open(os.path.join(root, "etc", name), encoding="utf-8") as f:
        return {line.split(":")[0]: line.rstrip("\n").split(":")
                for line in f if line.strip()}


# --------------------------------------------------------------------------
# sysusers.d and tmpfiles.d

def test_sysusers_and_tmpfiles_in_a_root(tmp_path):
    require_root()   # tmpfiles chowns to the users it made
    root = str(tmp_path / "root")
    os.makedirs(os.path.join(root, "etc"))
    run("systemd-sysusers", f"--root={root}",
        os.path.join(SYSTEMD_DIR, "smarthostd.sysusers.conf"))
    users = root_entries(root, "passwd")
    groups = root_entries(root, "group")
    user = users["smarthostd"]
    assert user[5] == "/var/spool/smarthostd", user
    assert user[6] == "/usr/sbin/nologin", user
    assert "smarthostdrop" in groups and "smarthostd" in groups, groups
    uid, gid = int(user[2]), int(user[3])
    assert gid == int(groups["smarthostd"][2])
    drop_gid = int(groups["smarthostdrop"][2])

    run("systemd-tmpfiles", "--create", f"--root={root}",
        os.path.join(SYSTEMD_DIR, "smarthostd.tmpfiles.conf"))
    # The owners and modes the daemon gives them itself when it starts as
    # root (spool_prepare, maildrop_prepare in smarthostd.c).
    spool = os.stat(os.path.join(root, "var/spool/smarthostd"))
    assert (spool.st_uid, spool.st_gid) == (uid, gid)
    assert spool.st_mode & 0o7777 == 0o711, oct(spool.st_mode)
    drop = os.stat(os.path.join(root, "var/spool/smarthostd/maildrop"))
    assert (drop.st_uid, drop.st_gid) == (uid, drop_gid)
    assert drop.st_mode & 0o7777 == 0o1730, oct(drop.st_mode)


def test_make_install_puts_the_snippets_in_place(tmp_path):
    builddir = os.environ.get("TOP_BUILDDIR")
    if not builddir:
        builddir = os.path.dirname(os.path.dirname(
            os.path.abspath(os.environ["SMARTHOSTD"])))
    dest = str(tmp_path / "dest")
    run("make", "-C", builddir, "-s", "install-data", f"DESTDIR={dest}",
        "prefix=/usr")
    for kind, snippet in (("sysusers.d", "sysusers"),
                          ("tmpfiles.d", "tmpfiles")):
        installed = os.path.join(dest, "usr/lib", kind, "smarthostd.conf")
        with open(installed, encoding="utf-8") as got, open(
                os.path.join(SYSTEMD_DIR, f"smarthostd.{snippet}.conf"),
                encoding="utf-8") as want:
            assert got.read() == want.read(), installed


def units_dir(tmp_path, smarthostd_binary, units):
    """A copy of units (paths under TOP_SRCDIR) whose ExecStart= runs the
    built daemon: verify checks that the command exists."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in units:
        with open(os.path.join(TOP_SRCDIR, unit), encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"^ExecStart=\S+/smarthostd\b",
                      f"ExecStart={smarthostd_binary}", text, flags=re.M)
        (out / os.path.basename(unit)).write_text(text)
    return [str(out / os.path.basename(u)) for u in units]


def test_system_units_verify(tmp_path, smarthostd_binary):
    # systemd-analyze verify needs no systemd as PID 1; --man=no because
    # the man pages are not installed where man(1) would find them.
    paths = units_dir(tmp_path, smarthostd_binary,
                      ["systemd/smarthostd.service",
                       "systemd/smarthostd.socket"])
    done = run("systemd-analyze", "verify", "--man=no", *paths)
    assert "smarthostd" not in done.stderr, done.stderr


# --------------------------------------------------------------------------
# Watchdog and STATUS=

def test_watchdog_and_status(upstream, daemon_factory, notify_socket):
    daemon = daemon_factory(upstream.port, start=False)
    # What systemd sets for WatchdogSec=0.4s: pings at half the interval.
    daemon_spawn(daemon, env=dict(os.environ,
                                  NOTIFY_SOCKET=notify_socket.path,
                                  WATCHDOG_USEC="400000"))
    notify_socket.wait_for("READY", "1", timeout=10)
    daemon_wait_started(daemon)
    daemon.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                daemon.log(daemon.run_start)).group(1))
    for _ in range(3):
        notify_socket.wait_for("WATCHDOG", "1", timeout=5)
    statuses = [f["STATUS"] for f in notify_socket.received
                if "STATUS" in f]
    assert any(re.fullmatch(r"0 queued; relay upstream up", s)
               for s in statuses), statuses

    # A message for a relay that refuses connections: queued, the relay
    # down, and STATUS= says so at the next update.
    upstream.stop()
    send_message(daemon, make_message("watchdog", "held back\n"))

    def status_shows():
        fields = notify_socket.next(1)
        status = (fields or {}).get("STATUS", "")
        return re.match(r"1 queued; relay upstream (down|up \(backoff)",
                        status)
    deadline = 30
    for _ in range(deadline * 4):
        if status_shows():
            break
    else:
        pytest.fail("no STATUS= with the queued message and the relay "
                    f"down: {notify_socket.received[-10:]}")
    assert daemon.terminate() == 0


# --------------------------------------------------------------------------
# Stop after the privilege drop

def test_stop_leaves_root_owned_socket_quietly(upstream, daemon_factory,
                                               pki):
    require_root()
    daemon = daemon_factory(upstream.port, start=False, user="nobody",
                            relays={"upstream": {"ca_file": "ca.pem"}})
    # The Unix socket's directory stays root's, as /run/smarthostd from
    # RuntimeDirectory= is: nobody cannot remove the socket on stop.
    os.chmod(daemon.workdir, 0o755)
    shutil.copyfile(pki.good.ca_cert, os.path.join(daemon.workdir, "ca.pem"))
    spool = daemon.settings["spool"]
    daemon.start()
    assert os.stat(spool).st_uid == pwd.getpwnam("nobody").pw_uid
    assert daemon.terminate() == 0
    assert not daemon.log_lines(r"unlink .*: Permission denied"), daemon.log()

    # The next start replaces the stale socket and serves on it.
    daemon.start()
    message = make_message("after restart", "Over the replaced socket.\n")
    send_message(daemon, message, via="unix")
    upstream.wait_messages(1)
    assert daemon.terminate() == 0
