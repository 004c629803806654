"""smarthostctl's queue commands against a running daemon, and the
-h/--help and -V/--version every program answers."""

import calendar
import json
import os
import re
import socket
import subprocess
import time

import pytest

from authharness import ctl_fields, run_ctl, smarthostctl_binary
from harness import (delivery_line, make_message, scaled, send_message,
                     wait_until)

PROGRAMS = ["smarthostd", "smarthostctl", "smarthost-sendmail",
            "smarthost-postdrop"]


def program(name):
    path = os.path.join(os.path.dirname(smarthostctl_binary()), name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not built next to smarthostctl ({path})")
    return path


def configured_version():
    """PACKAGE_VERSION, from the AC_INIT line of configure.ac."""
    top = os.environ.get("TOP_SRCDIR",
                         os.path.join(os.path.dirname(__file__), "..", ".."))
    with open(os.path.join(top, "configure.ac")) as f:
        for line in f:
            if line.startswith("AC_INIT("):
                return line.split("[")[2].split("]")[0]
    pytest.fail("no AC_INIT in configure.ac")


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name", PROGRAMS)
def test_version_long(name):
    r = run(program(name), "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{name} {configured_version()}\n"


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_long(name):
    r = run(program(name), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {name} "), r.stdout
    assert "--help" in r.stdout and "--version" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("name", ["smarthostd", "smarthostctl",
                                  "smarthost-postdrop"])
def test_short_options(name):
    """-h and -V as well; smarthost-sendmail keeps sendmail's -h (hop
    count) and -V (envelope id), which take an argument."""
    r = run(program(name), "-V")
    assert r.returncode == 0 and r.stdout.startswith(f"{name} "), r
    r = run(program(name), "-h")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {name} "), r


@pytest.mark.parametrize("name", ["smarthostd", "smarthostctl",
                                  "smarthost-postdrop"])
def test_unknown_long_option(name):
    r = run(program(name), "--no-such-option")
    assert r.returncode == 64, r
    assert "usage:" in r.stderr


@pytest.mark.parametrize("args", [["hold"], ["release"], ["delete"],
                                  ["reload", "x"], ["metrics", "x"],
                                  ["credentials-changed", "x"],
                                  ["auth-forget"], ["auth-forget", "a", "b"]])
def test_wrong_number_of_arguments(daemon, args):
    """Each command's argument count is checked before the daemon is
    asked: a usage error, and nothing done."""
    r = run(program("smarthostctl"), "-c", daemon.config_path, *args)
    assert r.returncode == 64, r
    assert r.stderr.startswith("usage: smarthostctl"), r
    assert r.stdout == ""


def test_long_options_beside_short(tmp_path):
    """smarthostd --test --config FILE checks a file as -t -c does."""
    bad = tmp_path / "bad.conf"
    bad.write_text("relays = (\n")
    r = run(program("smarthostd"), "--test", "--config", str(bad))
    assert r.returncode == 78, r
    assert str(bad) in r.stderr



# --------------------------------------------------------------------------
# The queue commands against a running daemon

DEFER = "defer@example.net"
REJECT = "reject@example.net"
OTHER = "other@example.org"
SLOW_RETRY = {"queue": {"retry_min": "1h", "retry_max": "1h",
                        "lifetime": "1d"}}


@pytest.fixture
def ctl():
    return program("smarthostctl")


@pytest.fixture
def stuck(upstream_factory, daemon_factory):
    """A daemon whose upstream defers DEFER and refuses REJECT, retrying
    only after an hour, so deferred mail stays put."""
    upstream = upstream_factory(rcpt_replies={
        DEFER: "451 4.3.0 try again later",
        REJECT: "550 5.1.1 no such user"})
    daemon = daemon_factory(upstream.port, **SLOW_RETRY)
    return upstream, daemon


def queue_deferred(daemon, subject, recipients=(DEFER,),
                   sender="a@example.org"):
    """Submits a message and waits until every recipient in DEFER's
    position was deferred once; returns its id."""
    qid = send_message(daemon, make_message(subject, f"Body of {subject}.",
                                            sender=sender),
                       sender=sender, recipients=recipients)
    for rcpt in recipients:
        status = "deferred" if rcpt == DEFER else "bounced"
        daemon.wait_log(delivery_line(qid, rcpt, status), timeout=20)
    # The attempt is over once its state record is synced and the
    # message waits in the schedule again (the scheduler's debug line);
    # until then hold, release and delete answer "being delivered now".
    # The listing shows the attempt as soon as the record is written,
    # which on a loaded disk is long before its sync.
    daemon.wait_log(rf"{qid}: scheduler \w+ -> waiting", timeout=20)
    assert queue_json(daemon)[qid]["attempts"] >= 1
    return qid


def ctl_run(daemon, *args):
    return run_ctl(program("smarthostctl"), daemon.config_path, *args)


def queue_json(daemon, *filters):
    r = ctl_run(daemon, "queue", "--json", *filters)
    assert r.returncode == 0, r.stderr
    return {m["id"]: m for m in json.loads(r.stdout)}


def test_queue_lists_deferred_and_bounced_state(stuck):
    upstream, daemon = stuck
    qid = queue_deferred(daemon, "mixed", recipients=(DEFER, REJECT))
    upstream.wait_messages(1)   # the bounce, gone
    wait_until(lambda: len(queue_json(daemon)) == 1, 10, "the bounce sent")
    msgs = queue_json(daemon)
    assert list(msgs) == [qid], msgs
    m = msgs[qid]
    rcpts = {r["address"]: r for r in m["recipients"]}
    assert rcpts[DEFER]["status"] == "pending"
    assert "451" in rcpts[DEFER]["reply"]
    assert rcpts[REJECT]["status"] == "failed"
    assert rcpts[REJECT]["dsn"] == "5.1.1"
    assert m["held"] is False and m["relay"] == "upstream"
    assert m["sender"] == "a@example.org" and m["attempts"] == 1
    text = ctl_run(daemon, "queue")
    assert text.returncode == 0, text.stderr
    assert re.search(rf"^{qid} .*attempts=1", text.stdout, re.M)
    assert text.stdout.endswith("-- 1 message\n"), text.stdout


def test_show_envelope_and_message(stuck):
    upstream, daemon = stuck
    qid = queue_deferred(daemon, "shown", recipients=(DEFER, REJECT))
    r = ctl_run(daemon, "show", qid)
    assert r.returncode == 0, r.stderr
    head, _, message = r.stdout.partition("\n\n")
    assert f"id: {qid}" in head.splitlines()
    assert "sender: <a@example.org>" in head.splitlines()
    assert re.search(rf"^recipient: <{DEFER}> pending 4\.3\.0 .*451",
                     head, re.M), head
    assert re.search(rf"^recipient: <{REJECT}> failed 5\.1\.1 .*550",
                     head, re.M), head
    assert "Subject: shown\n" in message
    assert "Body of shown." in message
    assert "\r" not in message

    r = ctl_run(daemon, "show", "--headers", qid)
    assert r.returncode == 0, r.stderr
    assert "Subject: shown" in r.stdout
    assert "Body of shown." not in r.stdout

    r = ctl_run(daemon, "show", "--json", qid)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["id"] == qid
    assert shown["message"].startswith("Received: from ")
    assert "\nFrom: <a@example.org>\n" in shown["message"]
    assert shown["message"].endswith("Body of shown.\n")
    assert [x["status"] for x in shown["recipients"]] == ["pending",
                                                          "failed"]
    r = ctl_run(daemon, "show", "--json", "--headers", qid)
    assert "Body of" not in json.loads(r.stdout)["headers"]

    r = ctl_run(daemon, "show", "0123456789ABCDEF")
    assert r.returncode == 65, r
    assert "no such message" in r.stderr


def test_hold_release_flush(stuck):
    upstream, daemon = stuck
    held = queue_deferred(daemon, "held")
    other = queue_deferred(daemon, "other")
    r = ctl_run(daemon, "hold", held)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{held}: held\n"
    assert list(queue_json(daemon, "--held")) == [held]
    assert list(queue_json(daemon, "--deferred")) == [other]
    assert queue_json(daemon)[held]["next_try"] is None
    r = ctl_run(daemon, "hold", held)
    assert r.returncode == 65 and "already held" in r.stdout, r
    r = ctl_run(daemon, "flush", held)
    assert r.returncode == 65 and "release it first" in r.stdout, r

    # Held across a restart, and never tried by a flush of everything.
    assert daemon.terminate() == 0
    daemon.start()
    assert queue_json(daemon)[held]["held"] is True
    upstream.handler.rcpt_replies[DEFER] = "250 2.1.5 OK"
    assert ctl_run(daemon, "flush").returncode == 0
    daemon.wait_log(delivery_line(other, DEFER, "sent"), timeout=20)
    upstream.wait_messages(1)
    upstream.assert_count_stays(1, settle=2)
    # The queue lists a sent message until its removal is written, after
    # whatever sync the spool's commit thread is in (on a loaded disk,
    # longer than any settle).
    daemon.wait_log(rf"{other}: removed")
    assert list(queue_json(daemon)) == [held]

    r = ctl_run(daemon, "release", held)
    assert r.returncode == 0 and r.stdout == f"{held}: released\n", r
    daemon.wait_log(delivery_line(held, DEFER, "sent"), timeout=20)
    wait_until(lambda: queue_json(daemon) == {}, 10, "an empty queue")


def control_pipelined(daemon, *requests):
    """Sends requests on one control connection in one write; returns
    each response as (status line, data lines). The daemon runs them one
    after the other in one go, each before any state record the earlier
    ones asked for is written."""
    path = daemon.settings.get("control_socket") or os.path.join(
        daemon.settings["spool"], "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(scaled(10))
        sock.connect(path)
        sock.sendall("".join(f"{r}\n" for r in requests).encode())
        reader = sock.makefile("r", encoding="utf-8", newline="\n")
        responses = []
        for _ in requests:
            status = reader.readline().rstrip("\n")
            lines = []
            while (line := reader.readline()) not in (".\n", ""):
                lines.append(line.rstrip("\n"))
            responses.append((status, lines))
    return responses


def test_flush_refuses_a_message_whose_hold_is_being_written(stuck):
    """A flush of a message held a moment ago, its hold's state record not
    written yet, is refused as for any held message: it stays held, so
    "due now" would be false."""
    upstream, daemon = stuck
    qid = queue_deferred(daemon, "just held")
    (hold, held), (flush, flushed) = control_pipelined(
        daemon, f"hold {qid}", f"flush {qid}")
    assert (hold, held) == ("ok", [f"{qid}: held"])
    assert flush.startswith("error flush failed"), (flush, flushed)
    assert flushed == [f"{qid}: held; release it first"]
    wait_until(lambda: queue_json(daemon)[qid]["held"], 10, "the hold")
    assert queue_json(daemon)[qid]["next_try"] is None


def test_flush_one_message(stuck):
    upstream, daemon = stuck
    first = queue_deferred(daemon, "first")
    second = queue_deferred(daemon, "second")
    upstream.handler.rcpt_replies[DEFER] = "250 2.1.5 OK"
    r = ctl_run(daemon, "flush", second)
    assert r.returncode == 0 and r.stdout == f"{second}: due now\n", r
    daemon.wait_log(delivery_line(second, DEFER, "sent"), timeout=20)
    upstream.assert_count_stays(1, settle=2)
    daemon.wait_log(rf"{second}: removed")
    assert list(queue_json(daemon)) == [first]


def test_delete(stuck):
    upstream, daemon = stuck
    ids = [queue_deferred(daemon, f"doomed {i}") for i in range(3)]
    r = ctl_run(daemon, "delete", ids[0], "0123456789ABCDEF")
    assert r.returncode == 65, r
    assert f"{ids[0]}: deleted" in r.stdout
    assert "0123456789ABCDEF: no such message" in r.stdout
    wait_until(lambda: list(queue_json(daemon)) == ids[1:], 10,
               "one message fewer")
    r = ctl_run(daemon, "delete", "--all")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: queue_json(daemon) == {}, 10, "an empty queue")
    spool = os.path.join(daemon.workdir, "spool", "queue")
    assert not [f for f in os.listdir(spool) if f in ids]
    # Deleted, not bounced: nothing went to the sender.
    upstream.assert_count_stays(0, settle=1)
    assert daemon.terminate() == 0
    daemon.start()
    assert queue_json(daemon) == {}


def test_queue_filters(stuck):
    upstream, daemon = stuck
    mine = queue_deferred(daemon, "mine", sender="ann@example.org")
    theirs = queue_deferred(daemon, "theirs", sender="bob@example.com",
                            recipients=(DEFER, REJECT))
    upstream.wait_messages(1)   # the bounce, gone
    wait_until(lambda: len(queue_json(daemon)) == 2, 10, "the bounce sent")
    assert list(queue_json(daemon, "--from", "ANN@")) == [mine]
    assert list(queue_json(daemon, "--to", "reject@")) == [theirs]
    assert list(queue_json(daemon, "--relay", "upstream")) == [mine,
                                                              theirs]
    assert queue_json(daemon, "--relay", "elsewhere") == {}
    assert queue_json(daemon, "--older-than", "1h") == {}
    time.sleep(2)
    assert len(queue_json(daemon, "--older-than", "1s")) == 2
    r = ctl_run(daemon, "queue", "--older-than", "soon")
    assert r.returncode == 64 and "not a duration" in r.stderr, r
    r = ctl_run(daemon, "queue", "--from", "a b")
    assert r.returncode == 64, r
    text = ctl_run(daemon, "queue", "--from", "nobody")
    assert text.stdout == "queue is empty\n", text


def test_status_json_and_reload(stuck):
    upstream, daemon = stuck
    r = ctl_run(daemon, "status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["pid"] == daemon.pid
    assert status["queued"] == 0
    assert [x["name"] for x in status["relays"]] == ["upstream"]
    assert status["relays"][0]["sessions"] == 0
    assert status["auth_required"] == []

    # Counts since start and the last error, per relay.
    qid = queue_deferred(daemon, "counted", recipients=(DEFER, REJECT))
    upstream.wait_messages(1)   # the bounce
    daemon.wait_log(r"to=<a@example.org>, .*status=sent")
    relay = json.loads(ctl_run(daemon, "status", "--json").stdout)[
        "relays"][0]
    assert (relay["sent"], relay["deferred"], relay["failed"]) == (1, 1, 1)
    assert relay["last_delivery"] is not None
    assert relay["last_error_at"] is not None
    assert re.match(r"(451|550) ", relay["last_error"]), relay
    text = ctl_fields(ctl_run(daemon, "status").stdout)
    assert text["sent"] == ["1"] and text["deferred"] == ["1"]
    assert text["failed"] == ["1"]
    assert re.match(r"upstream sent=1 deferred=1 failed=1 last-delivery=\S+ "
                    r"last-error=\S+ (451|550) ", text["relay-stats"][0])
    assert qid in queue_json(daemon)

    r = ctl_run(daemon, "reload")
    assert r.returncode == 0, r.stderr
    daemon.wait_log(r"control: reload requested by uid")
    daemon.wait_log(r"reloaded")
    # smarthostctl reads its own copy: the daemon's is the broken one.
    good = open(daemon.config_path).read()
    copy = os.path.join(daemon.workdir, "ctl.conf")
    with open(copy, "w") as f:
        f.write(good)
    with open(daemon.config_path, "a") as f:
        f.write("\nrelays = (\n")
    r = run_ctl(program("smarthostctl"), copy, "reload")
    assert r.returncode == 65, r
    assert re.search(r"smarthostd\.conf:\d+: ", r.stderr), r
    daemon.wait_log(r"reload failed, keeping the running config")
    with open(daemon.config_path, "w") as f:
        f.write(good)
    assert ctl_run(daemon, "status").returncode == 0


def test_status_shows_sessions_and_backoff(daemon_factory):
    """A relay session open (an upstream that takes the connection and
    never greets), then failed: status shows the session, then when the
    relay is tried again and why."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        daemon = daemon_factory(silent.getsockname()[1], **SLOW_RETRY)
        send_message(daemon, make_message("waits", "For a greeting.\n"))

        def relay():
            r = ctl_run(daemon, "status", "--json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["relays"][0]
        wait_until(lambda: relay()["sessions"] == 1, 10, "one session")
        assert relay()["backoff_until"] is None
        text = ctl_fields(ctl_run(daemon, "status").stdout)
        assert text["relay"] == ["upstream up sessions=1"], text
        conn, _ = silent.accept()
        conn.close()
    finally:
        silent.close()

    wait_until(lambda: relay()["backoff_until"] is not None, 10,
               "a backoff")
    st = relay()
    assert st["sessions"] == 0
    now = time.time()
    until = calendar.timegm(time.strptime(st["backoff_until"],
                                          "%Y-%m-%dT%H:%M:%SZ"))
    # retry_min is an hour.
    assert 3500 < until - now <= 3600, st
    assert st["last_error"] and st["last_error_at"] is not None, st
    text = ctl_fields(ctl_run(daemon, "status").stdout)
    assert re.fullmatch(rf"upstream {st['state']}( since=\S+)? "
                        rf"retry={st['backoff_until']}",
                        text["relay"][0]), text
    assert st["last_error"] in text["relay-stats"][0], text


# --------------------------------------------------------------------------
# Who may use the control socket

READ_GROUP = "shctlread"
ADMIN_GROUP = "shctladmin"
READER = "shctlr"
ADMIN = "shctla"


def user_in(name, group):
    from localuser import ensure_group, ensure_user
    ensure_group(group)
    user = ensure_user(name)
    subprocess.run(["usermod", "-a", "-G", group, name], check=True)
    return user


@pytest.fixture
def shared(stuck, tmp_path):
    """The stuck daemon with control groups and its socket, config and
    smarthostctl where unprivileged users reach them; (upstream, daemon,
    run(user, *args))."""
    import shutil
    import tempfile
    from localuser import as_user, ensure_user, require_root
    require_root()
    upstream, daemon = stuck
    user_in(READER, READ_GROUP)
    user_in(ADMIN, ADMIN_GROUP)
    ensure_user()
    public = tempfile.mkdtemp(prefix="shctl-")
    os.chmod(public, 0o755)
    assert daemon.terminate() == 0
    settings = daemon.settings = dict(
        daemon.settings, control_socket=os.path.join(public, "control.sock"),
        control_admin_group=ADMIN_GROUP, control_read_group=READ_GROUP)
    from harness import render_config
    for path in (daemon.config_path, os.path.join(public, "ctl.conf")):
        with open(path, "w") as f:
            f.write(render_config(settings))
        os.chmod(path, 0o644)
    binary = os.path.join(public, "smarthostctl")
    shutil.copy(program("smarthostctl"), binary)
    daemon.start()

    def run(user, *args):
        import pwd
        return as_user(pwd.getpwnam(user),
                       [binary, "-c", os.path.join(public, "ctl.conf"),
                        *args], capture_output=True, text=True, timeout=30)

    yield upstream, daemon, run
    shutil.rmtree(public, ignore_errors=True)


def test_socket_permissions(shared):
    from localuser import TEST_USER
    upstream, daemon, run = shared
    qid = queue_deferred(daemon, "guarded")
    # Anyone else: refused at connect.
    r = run(TEST_USER, "status")
    assert r.returncode == 77, r
    assert "permission denied" in r.stderr
    daemon.wait_log(r"control: refused uid \d+: only root")

    # The read group: status, queue and show; nothing that changes.
    r = run(READER, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["queued"] == 1
    r = run(READER, "queue", "--json")
    assert [m["id"] for m in json.loads(r.stdout)] == [qid]
    r = run(READER, "show", "--headers", qid)
    assert r.returncode == 0 and "Subject: guarded" in r.stdout, r
    for args in (["hold", qid], ["delete", qid], ["flush"], ["reload"],
                 ["release", qid], ["credentials-changed"]):
        r = run(READER, *args)
        assert r.returncode == 77, (args, r)
        assert f"permission denied: {args[0]} needs root" in r.stderr
    assert not queue_json(daemon)[qid]["held"]

    # The admin group: everything.
    r = run(ADMIN, "hold", qid)
    assert r.returncode == 0, r.stderr
    assert queue_json(daemon)[qid]["held"] is True
    # The message is retried every second or so (retry_min 1): a retry
    # that was already under way when it was held must end first.
    r = wait_until(lambda: (lambda r: None if "being delivered now" in
                            r.stdout else r)(run(ADMIN, "delete", qid)),
                   20, "the delete, once no attempt is under way")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: queue_json(daemon) == {}, 10, "an empty queue")
    assert os.stat(daemon.settings["control_socket"]).st_mode & 0o777 == \
        0o666


# --------------------------------------------------------------------------
# check: every relay, without sending mail

def issue_expired_cert(ca, name):
    """issue_server_cert's certificate, but valid for two days from ten
    days ago (made under faketime)."""
    from harness import (_KEYOPTS, SERVER_SAN, CertPair, _openssl,
                         _openssl_config)
    cnf = _openssl_config(ca.directory)
    key = os.path.join(ca.directory, f"{name}-server.key")
    csr = os.path.join(ca.directory, f"{name}-server.csr")
    pem = os.path.join(ca.directory, f"{name}-server.pem")
    _openssl("req", "-config", cnf, "-new", *_KEYOPTS, "-keyout", key,
             "-out", csr, "-subj", "/CN=smarthostd expired server")
    subprocess.run(["faketime", "-f", "-10d", "openssl", "x509", "-req",
                    "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
                    "-set_serial", "4242", "-extfile", cnf,
                    "-extensions", "v3_server", "-days", "2", "-out", pem],
                   check=True, capture_output=True, timeout=60,
                   env=dict(os.environ, SHD_SAN=SERVER_SAN))
    return CertPair(ca_cert=ca.cert, cert=pem, key=key)


@pytest.fixture
def relays(pki, tmp_path, daemon_factory, upstream_factory):
    """A daemon with one relay per case: good (AUTH works), expired
    certificate, wrong name, wrong password, no STARTTLS; and the
    password. Returns (daemon, password, upstreams)."""
    from authharness import (AuthUpstream, authinfo_line, new_password,
                             write_authinfo)
    from harness import CertAuthority
    password = new_password()
    started = []

    def auth(tls):
        u = AuthUpstream({"checker": password}, tls=tls)
        u.start(may_move=True)
        started.append(u)
        return u

    ca = CertAuthority(cert=pki.good.ca_cert,
                       key=pki.good.ca_cert[:-len(".pem")] + ".key",
                       directory=os.path.dirname(pki.good.ca_cert))
    if not os.path.exists(ca.key):
        pytest.fail(f"no CA key next to {pki.good.ca_cert}")
    ups = {"good": auth(pki.good),
           "expired": auth(issue_expired_cert(ca, "expired")),
           "misnamed": auth(pki.misnamed),
           "wrongpw": auth(pki.good),
           "plain": upstream_factory(tls=None)}
    authinfo = str(tmp_path / "authinfo")
    write_authinfo(authinfo, "".join(
        authinfo_line("127.0.0.1", u.port, "checker",
                      "wrong" + password if name == "wrongpw" else password)
        for name, u in ups.items() if name != "plain"))
    daemon = daemon_factory(ups["good"].port, start=False)
    base = dict(daemon.settings["relays"]["upstream"])
    settings = dict(daemon.settings, authinfo=[authinfo], relays={
        name: dict(base, port=str(u.port)) for name, u in ups.items()},
        default_relay="good")
    from harness import render_config
    daemon.settings = settings
    with open(daemon.config_path, "w") as f:
        f.write(render_config(settings))
    daemon.start()
    yield daemon, password, ups
    for u in started:
        u.stop()


def check_json(daemon, *args):
    r = ctl_run(daemon, "check", "--json", *args)
    out = json.loads(r.stdout)
    return r, {x["relay"]: x for x in out["relays"]}, out


def test_check_each_relay(relays):
    daemon, password, ups = relays
    r, found, out = check_json(daemon)
    assert r.returncode == 69, r.stderr
    assert out["ok"] is False
    assert set(found) == set(ups)

    good = found["good"]
    assert good["ok"] is True and good["error"] is None, good
    assert good["addresses"] == [f"127.0.0.1:{ups['good'].port}"]
    assert good["tls"].startswith("TLSv1.")
    assert "smarthostd test server" in good["certificate"]["subject"]
    assert "test CA" in good["certificate"]["issuer"]
    assert good["certificate"]["days_left"] in (1, 2)
    assert "AUTH" in good["extensions"]   # after STARTTLS: not offered again
    assert "CRAM-MD5" in good["mechanisms"]
    assert good["authenticated"] in ("CRAM-MD5", "PLAIN", "LOGIN")
    assert good["credentials"].endswith(" user checker")
    assert good["auth_required_learned"] == "no"

    assert found["expired"]["ok"] is False
    assert "expired" in found["expired"]["error"], found["expired"]
    assert found["misnamed"]["ok"] is False
    assert found["misnamed"]["certificate"] is None
    assert found["wrongpw"]["ok"] is False
    assert found["wrongpw"]["authenticated"] is None
    assert found["plain"]["ok"] is False
    assert "STARTTLS" in found["plain"]["error"], found["plain"]
    # No mail went anywhere, and no password reached the output.
    for u in ups.values():
        assert u.messages == []
    assert password not in r.stdout + r.stderr


def test_check_one_relay_text(relays):
    daemon, password, ups = relays
    r = ctl_run(daemon, "check", "good")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith(": valid")
    assert "relay: good" in lines
    assert any(x.startswith("tls: TLSv1.") for x in lines), lines
    assert any(x.startswith("certificate-days-left: ") for x in lines)
    assert any(x.startswith("authenticated: ") for x in lines), lines
    assert "result: ok" in lines
    assert "relay: expired" not in lines
    assert password not in r.stdout + r.stderr

    r = ctl_run(daemon, "check", "wrongpw")
    assert r.returncode == 69, r
    assert "result: failed" in r.stdout.splitlines()
    assert password not in r.stdout + r.stderr
    r = ctl_run(daemon, "check", "nosuchrelay")
    assert r.returncode == 64 and "no relay" in r.stderr, r

    # The configuration first: a broken one is named, with its line, and
    # no relay is tried.
    broken = os.path.join(daemon.workdir, "broken.conf")
    with open(daemon.config_path) as f, open(broken, "w") as out:
        out.write(f.read() + "\nrelays = (\n")
    r = run_ctl(program("smarthostctl"), broken, "check")
    assert r.returncode == 78, r
    assert re.match(rf"smarthostctl: {re.escape(broken)}:\d+: ", r.stderr), r
    assert r.stdout == ""
