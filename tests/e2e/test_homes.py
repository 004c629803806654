"""The daemon in its homes: the system service's sysusers.d/tmpfiles.d
snippets and units, the watchdog and STATUS= it sends systemd, the stop
of a daemon that dropped privileges; the container sidecar configured by
flags and SMARTHOSTD_* variables; a workstation user's own daemon."""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import textwrap
import threading
import time

import pytest
import yaml

from harness import (HOSTNAME, SOCKET_ACTIVATE, assert_relayed,
                     daemon_spawn, daemon_wait_started, free_port,
                     make_message, send_message, wait_until, wrapper,
                     TIMEOUT_SCALE)
from authharness import AuthUpstream, authinfo_line, new_password
from localuser import ensure_user, open_for_user, require_root

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
    for unit in ("smarthostd.service", "smarthostd.socket"):
        installed = os.path.join(dest, "usr/lib/systemd/user", unit)
        with open(installed, encoding="utf-8") as got, open(
                os.path.join(SYSTEMD_DIR, "user", unit),
                encoding="utf-8") as want:
            assert got.read() == want.read(), installed
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


def assert_watchdog_restarts(unit):
    """unit (a path under TOP_SRCDIR) lets systemd restart a daemon whose
    loop is stuck: Type=notify with the main process's notifications,
    WatchdogSec= set, and a restart on failure (a watchdog kill is one)."""
    service, section = {}, None
    with open(os.path.join(TOP_SRCDIR, unit), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and \
                    not line.startswith("#"):
                key, value = line.split("=", 1)
                service[key] = value
    assert service.get("Type") == "notify", service
    assert service.get("NotifyAccess", "main") == "main", service
    assert re.fullmatch(r"[1-9]\d*(s|min)", service.get("WatchdogSec", "")), \
        service
    assert service.get("Restart") in ("on-failure", "on-abnormal",
                                      "on-watchdog", "always"), service


def test_system_units_verify(tmp_path, smarthostd_binary):
    # systemd-analyze verify needs no systemd as PID 1; --man=no because
    # the man pages are not installed where man(1) would find them.
    paths = units_dir(tmp_path, smarthostd_binary,
                      ["systemd/smarthostd.service",
                       "systemd/smarthostd.socket"])
    done = run("systemd-analyze", "verify", "--man=no", *paths)
    assert "smarthostd" not in done.stderr, done.stderr
    assert_watchdog_restarts("systemd/smarthostd.service")


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


# The syscalls sleep(3) ends up in (nanosleep, clock_nanosleep), by
# machine: what /proc/PID/task/TID/syscall shows while it sleeps.
SLEEP_SYSCALLS = {"x86_64": {35, 230}, "aarch64": {101, 115}}


def test_stuck_loop_stops_the_watchdog(upstream, daemon_factory,
                                       notify_socket):
    """The pings come from the event loop: while the loop's thread (the
    main thread) is held in a 3 s sleep(3), no WATCHDOG=1 arrives, so
    systemd's WatchdogSec= would restart the daemon; the pings resume
    when the loop does. The sleep is an inferior call made by gdb in that
    thread, during which every other thread of the daemon runs (checked:
    none is stopped by the tracer while the loop thread sleeps), and
    WATCHDOG_PID names the daemon, as systemd sets it."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb is not installed (tests/bootstrap.sh installs it)")
    sleeping = SLEEP_SYSCALLS.get(os.uname().machine)
    if sleeping is None:
        pytest.fail(f"no sleep syscall numbers for {os.uname().machine}")
    daemon = daemon_factory(upstream.port, start=False)
    daemon_spawn(daemon, prefix=["sh", "-c",
                                 'WATCHDOG_PID=$$; export WATCHDOG_PID; '
                                 'exec "$@"', "sh"],
                 env=dict(os.environ, NOTIFY_SOCKET=notify_socket.path,
                          WATCHDOG_USEC="400000"))
    notify_socket.wait_for("READY", "1", timeout=10)
    daemon_wait_started(daemon)
    daemon.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                daemon.log(daemon.run_start)).group(1))
    pid = daemon.pid

    pings, stop = [], threading.Event()

    def collect():
        while not stop.is_set():
            fields = notify_socket.next(0.05)
            if fields is not None and fields.get("WATCHDOG") == "1":
                pings.append(time.monotonic())
    collector = threading.Thread(target=collect)
    collector.start()
    try:
        wait_until(lambda: len(pings) >= 3, 10, "three watchdog pings")

        def task_state(tid):
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()[0]

        def loop_sleeping():
            with open(f"/proc/{pid}/task/{pid}/syscall",
                      encoding="ascii") as f:
                nr = f.read().split()[0]
            return (task_state(pid) == "S" and nr.isdigit() and
                    int(nr) in sleeping)

        not_before = time.monotonic()
        held = subprocess.Popen(
            [gdb, "-nx", "-batch", "-p", str(pid), "-ex", "thread 1",
             "-ex", "call (unsigned int)sleep(3)"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            # The sleep starts after the last look that did not see it
            # (not_before) and is seen by the time of began: it certainly
            # lasts from began to not_before + 3 s.
            deadline = time.monotonic() + 30 * TIMEOUT_SCALE
            while True:
                checked = time.monotonic()
                if loop_sleeping():
                    break
                not_before = checked
                assert held.poll() is None, held.communicate()[0]
                assert checked < deadline, "the loop thread never slept"
                time.sleep(0.01)
            began = time.monotonic()
            # gdb resumes the other threads after it started the call in
            # the loop thread, one by one: the window opens once none of
            # them is stopped by the tracer.
            others_deadline = began + 1.0 * TIMEOUT_SCALE
            while True:
                others = {tid: task_state(tid)
                          for tid in os.listdir(f"/proc/{pid}/task")
                          if int(tid) != pid}
                running = time.monotonic()
                if "t" not in others.values() or running > others_deadline:
                    break
                time.sleep(0.01)
            out, _ = held.communicate(timeout=60)
        finally:
            if held.poll() is None:
                held.kill()
                held.wait()
        assert held.returncode == 0, out
        assert others and "t" not in others.values(), others
        # A ping sent just before the sleep may be read a moment later.
        window = (max(began + 0.3, running), not_before + 3)
        assert window[1] - window[0] >= 1.0, (window, out)
        during = [t for t in pings if window[0] <= t <= window[1]]
        assert during == [], (
            f"{len(during)} pings while the loop slept: at "
            f"{[round(t - began, 3) for t in during]} s of "
            f"{window[1] - began:.2f} s")
        ended = window[1]
        wait_until(lambda: len([t for t in pings if t > ended]) >= 3, 10,
                   "pings again after the loop woke")
    finally:
        stop.set()
        collector.join()
    assert daemon.running()
    send_message(daemon, make_message("after the stall", "Still relays.\n"))
    upstream.wait_messages(1)
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


# --------------------------------------------------------------------------
# Container sidecar: settings from flags and SMARTHOSTD_* variables

def setpriv(user):
    """The command prefix that runs a program as user."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            "--clear-groups", "--"]


class Sidecar:
    """smarthostd started with argv and env (no -c unless argv says so),
    optionally as another user, with -d unless debug is false, its stderr
    in workdir/daemon.log."""

    def __init__(self, workdir, argv, env, user=None, debug=True):
        self.log_path = os.path.join(workdir, "daemon.log")
        prefix = setpriv(user) if user is not None else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, *wrapper(), os.environ["SMARTHOSTD"],
                 *(["-d"] if debug else []), *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=workdir, env=env)
        self.port = None

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_started(self):
        def started():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited with {self.proc.returncode}:\n{self.log()}")
            return re.search(r"started, pid=", self.log())
        wait_until(started, 20, "the sidecar to start")
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                  self.log()).group(1))
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def sidecars():
    made = []

    def start(*args, **kwargs):
        made.append(Sidecar(*args, **kwargs))
        return made[-1]
    yield start
    # A crash at shutdown, or a daemon that ignores SIGTERM, fails the
    # test (stop() raises on the latter).
    statuses = [sidecar.stop() for sidecar in made]
    assert all(status == 0 for status in statuses), \
        f"sidecar exit statuses after SIGTERM: {statuses}"


def clean_env(**variables):
    """The test's environment without SMARTHOSTD_* settings, plus
    variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMARTHOSTD_") or k == "SMARTHOSTD_WRAPPER"}
    env.update(variables)
    return env


def sidecar_setup(upstream, pki, tmp_path):
    """The test user, a work directory it owns under tmp_path, and a
    sidecar's environment there: every setting from SMARTHOSTD_*
    variables, no file; the upstream's CA copied to workdir/ca.pem."""
    require_root()
    user = ensure_user()
    workdir = tmp_path / "sidecar"
    workdir.mkdir()
    shutil.copyfile(pki.good.ca_cert, workdir / "ca.pem")
    for path in (workdir, workdir / "ca.pem"):
        os.chown(path, user.pw_uid, user.pw_gid)
    open_for_user(str(tmp_path))
    return user, workdir, clean_env(
        SMARTHOSTD_RELAY=f"127.0.0.1:{upstream.port}",
        SMARTHOSTD_TLS="starttls",
        SMARTHOSTD_CA_FILE=str(workdir / "ca.pem"),
        SMARTHOSTD_HOSTNAME=HOSTNAME,
        SMARTHOSTD_SPOOL=str(workdir / "spool"))


def proc_status(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f
                    if ":\t" in line)


def test_sidecar_from_environment_and_flags_as_non_root(
        upstream, pki, tmp_path, sidecars):
    user, workdir, env = sidecar_setup(upstream, pki, tmp_path)
    sidecar = sidecars(str(workdir), [
        "--listen", "127.0.0.1:0", "--allow-network", "10.0.0.0/8",
        "--max-message-size", "10M"], env, user=user).wait_started()
    status = proc_status(sidecar.proc.pid)
    assert status["Uid"].split()[0] == str(user.pw_uid), status["Uid"]
    assert int(status["CapEff"], 16) == 0, status["CapEff"]
    # Credentials live in its memory: no core file, and not dumpable
    # (PR_SET_DUMPABLE 0), so other processes of its own user cannot
    # read that memory either; the kernel then gives the files of
    # /proc/PID to root instead of the process's user.
    with open(f"/proc/{sidecar.proc.pid}/limits", encoding="ascii") as f:
        core, = [line for line in f if line.startswith("Max core file")]
    assert core.split()[4:6] == ["0", "0"], core
    owner = os.stat(f"/proc/{sidecar.proc.pid}/environ").st_uid
    assert owner == 0, f"dumpable: /proc/PID/environ owned by uid {owner}"

    with smtplib.SMTP("127.0.0.1", sidecar.port, local_hostname="client.test",
                      timeout=10) as client:
        code, reply = client.ehlo()
        assert code == 250
        assert b"SIZE 10485760" in reply, reply
        message = make_message("sidecar", "Configured without a file.\n")
        client.sendmail("a@example.org", ["b@example.net"], message)
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)

    # The health probe: smarthostctl status with the container's
    # environment finds the daemon's control socket.
    ctl = os.path.join(os.path.dirname(os.environ["SMARTHOSTD"]),
                       "smarthostctl")
    done = subprocess.run(
        [*setpriv(user), ctl, "status"],
        env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert sidecar.stop() == 0, sidecar.log()
    done = subprocess.run(
        [*setpriv(user), ctl, "status"],
        env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0, "status succeeds with the daemon stopped"


def test_sidecar_sigterm_finishes_the_message_and_closes_idle_sessions(
        upstream, pki, tmp_path, sidecars):
    # A sidecar's stop: SIGTERM while one client is idle and another is
    # inside DATA. The idle one gets 421 at once, the other may finish its
    # message (250), the daemon exits 0 within shutdown_timeout's default
    # (30 s, a container engine's usual grace period), and the message is
    # delivered exactly once, before the stop or after the next start.
    user, workdir, env = sidecar_setup(upstream, pki, tmp_path)
    # Without -d, as the image runs it: the log is on stderr all the same.
    argv = ["--listen", "127.0.0.1:0"]
    sidecar = sidecars(str(workdir), argv, env, user=user,
                       debug=False).wait_started()
    message = make_message("sigterm", "Finished after the SIGTERM.\n")
    head, tail = message[:len(message) // 2], message[len(message) // 2:]
    with smtplib.SMTP("127.0.0.1", sidecar.port, local_hostname="idle.test",
                      timeout=10) as idle, \
            smtplib.SMTP("127.0.0.1", sidecar.port,
                         local_hostname="busy.test", timeout=10) as busy:
        assert idle.ehlo()[0] == 250
        assert busy.ehlo()[0] == 250
        assert busy.mail("a@example.org")[0] == 250
        assert busy.rcpt("b@example.net")[0] == 250
        busy.putcmd("data")
        assert busy.getreply()[0] == 354
        busy.send(head)
        start = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        code, reply = idle.getreply()
        assert code == 421, reply
        busy.send(tail + b".\r\n")
        code, reply = busy.getreply()
        assert code == 250, reply
        code, reply = busy.docmd("NOOP")
        assert code == 421, reply
    assert sidecar.proc.wait(timeout=30) == 0, sidecar.log()
    assert time.monotonic() - start < 30
    # Delivered before the stop, or queued in the spool for the next start.
    sidecar = sidecars(str(workdir), argv, env, user=user,
                       debug=False).wait_started()
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)
    assert sidecar.stop() == 0, sidecar.log()
    assert len(upstream.messages) == 1


# --------------------------------------------------------------------------
# The container image and the examples in doc/container.md, checked against
# this build (no container engine here: nothing is run in a container).

CONTAINERFILE = os.path.join(TOP_SRCDIR, "etc", "container", "Containerfile")
CONTAINER_DOC = os.path.join(TOP_SRCDIR, "doc", "container.md")


def containerfile_stages():
    """[[(INSTRUCTION, arguments)]] per FROM stage, continuation lines
    joined, comments dropped."""
    with open(CONTAINERFILE, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"(?m)^\s*#.*\n", "", text)
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, " ".join(args.split())))
    return stages


def instructions(stage, name):
    return [args for instruction, args in stage if instruction == name]


def apt_installs(stage):
    """The packages a stage's RUN steps apt-get install."""
    packages = set()
    for run in instructions(stage, "RUN"):
        for command in run.split("&&"):
            words = command.split()
            if words[:1] == ["apt-get"] or "apt-get" in words:
                i = words.index("apt-get")
                if words[i + 1:i + 2] == ["install"]:
                    packages |= {w for w in words[i + 2:]
                                 if not w.startswith("-")}
    return packages


def builddir():
    return os.environ.get("TOP_BUILDDIR") or os.path.dirname(
        os.path.dirname(os.path.abspath(os.environ["SMARTHOSTD"])))


def package_of(path):
    """The Debian package that owns path (as given, or on the other side
    of the /lib -> /usr/lib merge), without its architecture."""
    path = os.path.normpath(path)
    other = ("/usr" + path if path.startswith("/lib/") else
             path[len("/usr"):] if path.startswith("/usr/lib/") else path)
    for candidate in (path, other):
        done = subprocess.run(["dpkg", "-S", candidate], capture_output=True,
                              text=True, timeout=60)
        if done.returncode == 0:
            return done.stdout.split(":")[0]
    raise AssertionError(f"no Debian package owns {path}")


def smarthostd_variables():
    """The SMARTHOSTD_* variables and the --flags smarthostd --help
    lists."""
    text = run(os.environ["SMARTHOSTD"], "--help").stdout
    return (set(re.findall(r"\bSMARTHOSTD_[A-Z_]+", text)) |
            {"SMARTHOSTD_CONFIG"},
            set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z-]+)", text)))


def test_containerfile_builds_what_this_tree_builds(tmp_path):
    build, image = containerfile_stages()
    assert instructions(build, "FROM") == ["debian:12 AS build"]
    assert instructions(image, "FROM") == ["debian:12"]

    # The build stage installs the -dev package of every library the
    # programs link (the -l flags configure found), and the tools.
    with open(os.path.join(builddir(), "Makefile"), encoding="utf-8") as f:
        makefile = f.read()
    libs = set()
    for var in ("LIBEVENT_LIBS", "OPENSSL_LIBS", "LIBCONFIG_LIBS",
                "LIBSYSTEMD_LIBS", "PTHREAD_LIBS"):
        line = re.search(rf"(?m)^{var} = (.*)$", makefile).group(1)
        libs |= set(re.findall(r"-l(\S+)", line))
    assert libs >= {"event", "ssl", "config", "systemd"}, libs
    # -lpthread is glibc's libpthread.a, in libc6-dev: build-essential's.
    dev = {package_of(run("gcc", f"-print-file-name=lib{lib}.so")
                      .stdout.strip()) for lib in libs - {"pthread"}}
    build_packages = apt_installs(build)
    assert dev <= build_packages, dev - build_packages
    assert {"build-essential", "autoconf", "automake", "autoconf-archive",
            "libtool", "pkg-config"} <= build_packages, build_packages

    # Its configure options exist, and --disable-tests drops the one
    # check dependency (Criterion) the stage does not install.
    configure = next(r for r in instructions(build, "RUN")
                     if "./configure" in r)
    options = re.findall(r"(--[a-z-]+)(?:=\S+)?",
                         configure.split("./configure", 1)[1]
                         .split("&&")[0])
    assert "--disable-tests" in options, configure
    help_text = run(os.path.join(TOP_SRCDIR, "configure"), "--help").stdout
    for option in options:
        assert re.search(rf"(?m)^\s+{option}\b", help_text), option

    # make install with the stage's prefix puts the programs where the
    # image copies them from, and what the image runs is among them.
    copy, = instructions(image, "COPY")
    source, target = copy.split()[1:]
    assert copy.startswith("--from=build /out/") and target == "/usr/sbin/"
    dest = tmp_path / "out"
    run("make", "-C", builddir(), "-s", "install-exec", f"DESTDIR={dest}",
        "prefix=/usr")
    sbin = dest / source[len("/out/"):]
    installed = set(os.listdir(sbin))
    entry, = instructions(image, "ENTRYPOINT")
    health, = instructions(image, "HEALTHCHECK")
    assert json.loads(entry)[0] in installed, (entry, installed)
    probe = json.loads(health.split(" CMD ", 1)[1])
    assert probe[0] in installed and probe[1:] == ["status"], health

    # The runtime stage installs the package of every shared library the
    # programs need (libc6 is in the base image). A sanitizer build's
    # runtime libraries are not in the image's build.
    image_packages = apt_installs(image) | {"libc6"}
    for program in sorted(installed):
        path = sbin / program
        needed = re.findall(r"NEEDED\s+(\S+)",
                            run("objdump", "-p", str(path)).stdout)
        resolved = dict(re.findall(r"(?m)^\s*(\S+) => (/\S+)",
                                   run("ldd", str(path)).stdout))
        for soname in needed:
            if re.match(r"lib(asan|ubsan|stdc\+\+|gcc_s)\b", soname):
                continue
            pkg = package_of(resolved[soname])
            assert pkg in image_packages, (program, soname, pkg)


def test_container_settings_are_the_programs(tmp_path):
    _, image = containerfile_stages()
    variables, flags = smarthostd_variables()
    env = dict(a.split("=", 1) for line in instructions(image, "ENV")
               for a in line.split())
    assert set(env) <= variables, env
    volume, = instructions(image, "VOLUME")
    assert env["SMARTHOSTD_SPOOL"] == volume
    uid = re.search(r"useradd .*--uid (\d+)", " ".join(
        instructions(image, "RUN"))).group(1)
    assert instructions(image, "USER") == ["smarthostd"]
    # The image's own settings, with a relay, are a valid configuration.
    done = subprocess.run(
        [os.environ["SMARTHOSTD"], "-t"], cwd=str(tmp_path),
        env=clean_env(**env, SMARTHOSTD_RELAY="smtp.example.com:587"),
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr

    with open(CONTAINER_DOC, encoding="utf-8") as f:
        doc = f.read()
    # Each table row names a flag and its variable, both real.
    rows = re.findall(r"(?m)^\|\s*`(--[a-z-]+)[^`]*`\s*\|\s*`(\w+)`", doc)
    assert len(rows) == len(variables) - 1, rows
    for flag, variable in rows:
        assert flag in flags and variable in variables, (flag, variable)

    def example(heading):
        """The first indented block after heading, as YAML."""
        block = []
        for line in doc.split(heading + "\n", 1)[1].splitlines():
            if line.startswith("    ") or (block and not line.strip()):
                block.append(line)
            elif block:
                break
        return yaml.safe_load(textwrap.dedent("\n".join(block)))

    compose = example("## Compose")["services"]["smarthostd"]
    pod = example("## Kubernetes pod")
    sidecar = next(c for c in pod["spec"]["containers"]
                   if c["name"] == "smarthostd")
    assert str(compose["secrets"][0]["uid"]) == uid
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)
    # What each example gives the daemon is a valid configuration.
    for argv, variables_set in (
            ([], compose["environment"]),
            (sidecar["args"], {}),
            (shlex.split(re.search(r"podman run (.*?)\n\n", doc, re.S)
                         .group(1).replace("\\\n", " ")
                         .split(" smarthostd ", 1)[1]), {})):
        assert set(variables_set) <= variables, variables_set
        assert {a for a in argv if a.startswith("--")} <= flags, argv
        done = subprocess.run(
            [os.environ["SMARTHOSTD"], "-t", *argv], cwd=str(tmp_path),
            env=clean_env(**{**env, **variables_set}), capture_output=True,
            text=True, timeout=30)
        assert done.returncode == 0, (argv, variables_set, done.stderr)


def write_config(path, relay_port, ca_file, spool):
    path.write_text(
        f'hostname = "{HOSTNAME}";\nspool = "{spool}";\n'
        'listen = ( { address = "127.0.0.1"; port = "0"; } );\n'
        'queue = { retry_min = 1; retry_max = 2; };\n'
        'relays = { upstream = {\n'
        f'  host = "127.0.0.1"; port = "{relay_port}";\n'
        f'  ca_file = "{ca_file}";\n'
        '}; };\n')


@pytest.mark.parametrize("how", ["flag", "env", "flag-over-env"])
def test_override_wins_over_the_file(upstream, pki, tmp_path, sidecars, how):
    # The file names a relay port nothing listens on; the override gives
    # the upstream's, so mail reaches it only when the override wins.
    conf = tmp_path / "smarthostd.conf"
    write_config(conf, free_port(), pki.good.ca_cert, tmp_path / "spool")
    good = f"127.0.0.1:{upstream.port}"
    argv, env = ["-c", str(conf)], clean_env()
    if how == "flag":
        argv += ["--relay", good]
    elif how == "env":
        env["SMARTHOSTD_RELAY"] = good
    else:
        env["SMARTHOSTD_RELAY"] = f"127.0.0.1:{free_port()}"
        argv += ["--relay", good]
    sidecar = sidecars(str(tmp_path), argv, env).wait_started()
    with smtplib.SMTP("127.0.0.1", sidecar.port, local_hostname="client.test",
                      timeout=10) as client:
        message = make_message(f"override {how}", "Relay from the flag.\n")
        client.sendmail("a@example.org", ["b@example.net"], message)
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)
    assert sidecar.stop() == 0


def test_override_errors_name_flag_and_variable(tmp_path):
    conf = tmp_path / "smarthostd.conf"
    conf.write_text('relays = { r = { host = "127.0.0.1";\n'
                    '  tls = "sometimes"; }; };\n')
    for argv, env, want in [
            (["--relay", "127.0.0.1", "--tls", "bogus"], {},
             r"^smarthostd: --tls: .*tls must be"),
            (["--relay", "127.0.0.1"], {"SMARTHOSTD_ALLOW_NETWORKS": "x/99"},
             r"^smarthostd: SMARTHOSTD_ALLOW_NETWORKS: allow_networks: "
             r'"x/99"'),
            (["-c", str(conf)], {}, rf"^smarthostd: {re.escape(str(conf))}:2: "),
            (["-c", str(conf), "--tls", "none", "--max-message-size", "9Q"],
             {}, r"^smarthostd: --max-message-size: ")]:
        done = subprocess.run(
            [os.environ["SMARTHOSTD"], "-t", *argv], env=clean_env(**env),
            capture_output=True, text=True, timeout=30, cwd=str(tmp_path))
        assert done.returncode == 78, (argv, env, done.stderr)
        assert re.search(want, done.stderr, re.M), (argv, env, done.stderr)


# --------------------------------------------------------------------------
# Workstation: a user's own daemon, found by the user's own tools

def test_user_units_verify(tmp_path, smarthostd_binary):
    # --user needs a runtime directory to resolve %t, not a user manager.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    paths = units_dir(tmp_path, smarthostd_binary,
                      ["systemd/user/smarthostd.service",
                       "systemd/user/smarthostd.socket"])
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", "--man=no", *paths],
        env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)),
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "smarthostd" not in done.stderr, done.stderr
    assert_watchdog_restarts("systemd/user/smarthostd.service")


def workstation(tmp_path, pki, upstream, listen, relay_extra=""):
    """The test user's home under tmp_path with its own
    ~/cfg/smarthostd/smarthostd.conf (listen, one relay to upstream with
    relay_extra, no spool: it defaults to $XDG_STATE_HOME), a runtime
    directory (mode 0700), all the user's; returns (user, home, env) with
    the user's XDG variables in env."""
    require_root()
    user = ensure_user()
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    for d in (home / "cfg" / "smarthostd", home / "state", runtime):
        d.mkdir(parents=True)
    shutil.copyfile(pki.good.ca_cert, home / "ca.pem")
    (home / "cfg" / "smarthostd" / "smarthostd.conf").write_text(
        f'hostname = "{HOSTNAME}";\n'
        f'listen = {listen};\n'
        'relays = { upstream = {\n'
        f'  host = "127.0.0.1"; port = "{upstream.port}";\n'
        f'  ca_file = "{home / "ca.pem"}"; {relay_extra}\n'
        '}; };\n')
    for root, dirs, files in os.walk(tmp_path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
    open_for_user(str(tmp_path))
    os.chmod(runtime, 0o700)
    env = clean_env(HOME=str(home), XDG_CONFIG_HOME=str(home / "cfg"),
                    XDG_STATE_HOME=str(home / "state"),
                    XDG_RUNTIME_DIR=str(runtime))
    env.pop("GNUPGHOME", None)
    return user, home, env


def gpg_as(as_user, env, *args, **kwargs):
    """gpg run as the user (as_user: the setpriv prefix) with env."""
    return subprocess.run(
        [*as_user, "gpg", "--batch", "--quiet", "--pinentry-mode",
         "loopback", "--passphrase", "", *args], env=env,
        capture_output=True, timeout=120, **kwargs)


def test_workstation_user_finds_own_daemon(pki, tmp_path, sidecars):
    # A user's own daemon, tools and credentials: the upstream requires
    # AUTH, and the password is only in the user's ~/.authinfo.gpg, which
    # the daemon decrypts through gpg (and the user's gpg-agent) as that
    # user; no authinfo setting, so the default list finds it.
    password = new_password()
    upstream = AuthUpstream({"alice": password}, tls=pki.good)
    upstream.start(may_move=True)
    sock = tmp_path / "runtime" / "smtp.sock"
    user, home, env = workstation(
        tmp_path, pki, upstream,
        f'( {{ path = "{sock}"; }},\n'
        '  { address = "127.0.0.1"; port = "0"; } )',
        'user = "alice"; auth = "always";')
    as_user = setpriv(user)
    sidecar = None
    try:
        done = gpg_as(as_user, env, "--quick-gen-key", "shtest <s@test>",
                      "future-default", "default", "never")
        assert done.returncode == 0, done.stderr
        done = gpg_as(as_user, env, "--trust-model", "always", "-r",
                      "s@test", "-o", str(home / ".authinfo.gpg"), "-e",
                      input=authinfo_line("127.0.0.1", upstream.port,
                                          "alice", password).encode())
        assert done.returncode == 0, done.stderr
        sidecar = sidecars(str(home), [], env, user=user).wait_started()
        state = home / "state"
        assert (state / "smarthostd" / "control.sock").exists(), \
            sorted(os.listdir(state))

        bindir = os.path.dirname(os.environ["SMARTHOSTD"])
        message = make_message("workstation", "From the user's own relay.\n")
        done = subprocess.run(
            [*as_user, os.path.join(bindir, "smarthost-sendmail"), "-oi",
             "-f", "a@example.org", "b@example.net"],
            input=message, env=env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        msg, = upstream.wait_messages(1)
        assert msg.parsed()["Subject"] == "workstation"
        assert upstream.auth_commands(), upstream.describe()
        done = subprocess.run(
            [*as_user, os.path.join(bindir, "smarthostctl"), "status"],
            env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert sidecar.stop() == 0, sidecar.log()
        assert password not in sidecar.log()
    finally:
        # The daemon first: it would start another agent to decrypt.
        if sidecar is not None:
            sidecar.stop()
        subprocess.run([*as_user, "gpgconf", "--kill", "gpg-agent"],
                       env=env, capture_output=True, timeout=30)
        upstream.stop()


def test_user_units_activate_the_users_daemon(upstream, pki, tmp_path):
    # What `systemctl --user enable --now smarthostd.socket` sets up, with
    # systemd-socket-activate in the user manager's place: the socket
    # unit's listeners (%t is $XDG_RUNTIME_DIR; the TCP port a free one,
    # named in the user's file, where the tools look), the service unit's
    # command line as that user, whose first connection starts the daemon.
    port = free_port()
    user, home, env = workstation(
        tmp_path, pki, upstream,
        f'( {{ address = "127.0.0.1"; port = "{port}"; }} )')
    runtime = tmp_path / "runtime"
    with open(os.path.join(SYSTEMD_DIR, "user", "smarthostd.socket"),
              encoding="utf-8") as f:
        listens = re.findall(r"(?m)^ListenStream=(.*)$", f.read())
    assert listens == ["127.0.0.1:2525", "%t/smarthostd/smtp.sock"], listens
    sock = listens[1].replace("%t", str(runtime))
    # RuntimeDirectory=smarthostd, mode 0700.
    os.mkdir(os.path.dirname(sock), 0o700)
    os.chown(os.path.dirname(sock), user.pw_uid, user.pw_gid)
    with open(os.path.join(SYSTEMD_DIR, "user", "smarthostd.service"),
              encoding="utf-8") as f:
        exec_start, = re.findall(r"(?m)^ExecStart=(.*)$", f.read())
    assert exec_start.split() == ["/usr/local/sbin/smarthostd"], exec_start
    # systemd-socket-activate passes on only the variables named with -E;
    # the user manager passes its environment, which has these.
    passed = [f"-E{k}" for k in ("PATH", "HOME", "XDG_CONFIG_HOME",
                                 "XDG_STATE_HOME", "XDG_RUNTIME_DIR")]
    log_path = tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*setpriv(user), SOCKET_ACTIVATE, *passed, "-l",
             f"127.0.0.1:{port}", "-l", sock, *wrapper(),
             os.environ["SMARTHOSTD"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=str(home), env=env)
    try:
        wait_until(lambda: os.path.exists(sock), 10,
                   "systemd-socket-activate to listen")
        bindir = os.path.dirname(os.environ["SMARTHOSTD"])
        message = make_message("activated", "Started by the socket.\n")
        done = subprocess.run(
            [*setpriv(user), os.path.join(bindir, "smarthost-sendmail"),
             "-oi", "-f", "a@example.org", "b@example.net"],
            input=message, env=env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        msg, = upstream.wait_messages(1)
        assert msg.parsed()["Subject"] == "activated"
        # The socket in the runtime directory serves too (its mode,
        # SocketMode=0600, is the user manager's to apply).
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(10)
            unix.connect(sock)
            assert unix.recv(512).startswith(b"220 "), "no greeting"
        done = subprocess.run(
            [*setpriv(user), os.path.join(bindir, "smarthostctl"), "status"],
            env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    with open(log_path, encoding="utf-8", errors="replace") as f:
        assert rc == 0, f.read()
