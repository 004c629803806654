"""`smarthostctl import` on real-world msmtp, ssmtp and nullmailer
configurations (tests/e2e/import/), checked by running the result: the
imported smarthostd.conf, with only the test's own spool, listeners and
retry times added, is loaded by the real daemon, which relays to aiosmtpd
upstreams on loopback that demand AUTH; each message must arrive at the
upstream the old tool would have used, logged in with that account.

The fixtures hold @NAME@ placeholders for what only the test knows (the
upstreams' ports, the test CA, fresh passwords).
"""

import os
import re
import shutil
import socket
import subprocess

import pytest

from authharness import new_password, smarthostctl_binary
from harness import (HOSTNAME, Daemon, delivery_line, make_message,
                     rewrite_config, send_message)
from test_auth import assert_no_secret

RCPT = "b@example.net"

pytestmark = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")


def fixture_dir():
    top = os.environ.get("TOP_SRCDIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    return os.path.join(top, "tests", "e2e", "import")


def fill(template, dest, values):
    """Copies the fixture template to dest with @NAME@ replaced."""
    with open(template, encoding="utf-8") as f:
        text = f.read()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    assert not re.search(r"@[A-Z_]+@", text), \
        f"unfilled placeholder in {dest}"
    with open(dest, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(dest, 0o600)


def run_import(tmp_path, tool, source, secrets):
    """smarthostctl import TOOL SOURCE --write DIR: returns (DIR, stdout,
    stderr) after checking that no password reached either stream."""
    ctl = smarthostctl_binary()
    out = tmp_path / "imported"
    run = subprocess.run([ctl, "import", tool, str(source), "--write",
                          str(out)], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    for secret in secrets:
        assert secret not in run.stdout + run.stderr, \
            "a password reached the import's output"
    # only authinfo holds passwords; a config that names a password
    # command is kept private too
    with open(out / "smarthostd.conf", encoding="utf-8") as f:
        command = "password_command" in f.read()
    for name in os.listdir(out):
        want = 0o600 if name == "authinfo" or \
            (name == "smarthostd.conf" and command) else 0o644
        assert os.stat(out / name).st_mode & 0o777 == want, name
    return out, run.stdout, run.stderr


def start_imported(smarthostd_binary, imported, made):
    """The daemon on the imported config, with the test's spool,
    listeners and retry times added (the import sets none of these)."""
    with open(imported / "smarthostd.conf", encoding="utf-8") as f:
        text = f.read()
    daemon = Daemon(smarthostd_binary, {"relays": {}})
    made.append(daemon)
    own = {
        "hostname": f'"{HOSTNAME}"',
        "spool": f'"{os.path.join(daemon.workdir, "spool")}"',
        "shutdown_timeout": "5",
        "listen": '( { address = "127.0.0.1"; port = "0"; }, { path = "'
                  + os.path.join(daemon.workdir, "smtp.sock") + '"; } )',
        "queue": "{ retry_min = 1; retry_max = 4; lifetime = \"1h\"; }",
    }
    head = "".join(f"{key} = {value};\n" for key, value in own.items()
                   if not re.search(rf"^{key}\s*=", text, re.M))
    rewrite_config(daemon, head + text)
    check = subprocess.run([smarthostd_binary, "-t", "-c",
                            daemon.config_path], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr + head + text
    return daemon.start()


@pytest.fixture
def daemons(request):
    """Daemons to stop when the test ends; as daemon_factory, the test
    fails when one did not stop cleanly (see Daemon.close)."""
    made = []
    request.node.smarthostd_daemons = made
    yield made
    problems = [p for p in (daemon.close() for daemon in made) if p]
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def closing():
    """Sockets to close when the test ends."""
    made = []
    yield made
    for sock in made:
        sock.close()


def logins(upstream):
    """The logins the upstream accepted."""
    return {login for _, login, ok in upstream.handler.attempts if ok}


def send(daemon, sender, recipient=RCPT):
    message = make_message(f"from {sender}", "Imported.\n", sender=sender,
                           recipient=recipient)
    qid = send_message(daemon, message, sender=sender,
                       recipients=(recipient,))
    return qid


def test_msmtp_accounts(tmp_path, pki, auth_upstream_factory,
                        smarthostd_binary, daemons):
    work_pw, home_pw = new_password("work"), new_password("home")
    work = auth_upstream_factory({"me@work.example": work_pw})
    home = auth_upstream_factory({"me@home.example": home_pw})
    (tmp_path / "home-password").write_text(home_pw + "\n")
    rc = tmp_path / "msmtprc"
    fill(os.path.join(fixture_dir(), "msmtprc"), rc, {
        "CA": pki.good.ca_cert, "WORK_PORT": work.port,
        "HOME_PORT": home.port, "WORK_PW": work_pw, "DIR": tmp_path})
    out, stdout, stderr = run_import(tmp_path, "msmtp", rc, [work_pw])
    # what has no counterpart is listed, with its line
    assert re.search(r"msmtprc:10: logfile: not mapped", stderr), stderr
    assert "wrote " + str(out / "authinfo") in stdout
    with open(out / "authinfo", encoding="utf-8") as f:
        assert f.read() == (f"machine 127.0.0.1 port {work.port} login "
                            f"me@work.example password {work_pw}\n")

    daemon = start_imported(smarthostd_binary, out, daemons)
    sent = {"me@work.example": work, "me@home.example": home,
            "list-dev@example.org": home}
    qids = [send(daemon, sender) for sender in sent]
    for qid in qids:
        daemon.wait_log(delivery_line(qid, RCPT, "sent"), timeout=20)
    for upstream in (work, home):
        want = sorted(s for s, u in sent.items() if u is upstream)
        got = upstream.wait_messages(len(want))
        assert sorted(m.mail_from for m in got) == want
    assert logins(work) == {"me@work.example"}, work.describe()
    assert logins(home) == {"me@home.example"}, home.describe()
    assert_no_secret(daemon.log(), ("me@work.example", work_pw),
                     ("me@home.example", home_pw))


def test_ssmtp_mailhub_revaliases_and_root(tmp_path, pki,
                                           auth_upstream_factory,
                                           smarthostd_binary, daemons):
    hub_pw = new_password("hub")
    hub = auth_upstream_factory({"relay@corp.example": hub_pw})
    partner = auth_upstream_factory({"relay@corp.example": hub_pw})
    etc = tmp_path / "ssmtp"
    etc.mkdir()
    values = {"CA": pki.good.ca_cert, "HUB_PORT": hub.port,
              "PARTNER_PORT": partner.port, "HUB_PW": hub_pw}
    for name in ("ssmtp.conf", "revaliases"):
        fill(os.path.join(fixture_dir(), name), etc / name, values)
    out, stdout, stderr = run_import(tmp_path, "ssmtp", etc / "ssmtp.conf",
                                     [hub_pw])
    assert "root=postmaster@corp.example: mapped to the alias" in stderr, \
        stderr

    daemon = start_imported(smarthostd_binary, out, daemons)
    # rewriteDomain: a local sender gets the domain; revaliases: ops is
    # rewritten, alice is rewritten and goes through her own mailhub;
    # root: mail to root goes to postmaster
    cases = [("bob", RCPT, hub, "bob@corp.example", RCPT),
             ("ops", RCPT, hub, "operations@corp.example", RCPT),
             ("alice", RCPT, partner, "alice@partner.example", RCPT),
             ("cron@corp.example", "root", hub, "cron@corp.example",
              "postmaster@corp.example")]
    for sender, rcpt, _, _, _ in cases:
        qid = send(daemon, sender, rcpt)
        daemon.wait_log(rf"{qid}: to=<[^>]+>, relay=\S+, .*status=sent",
                        timeout=20)
    for upstream in (hub, partner):
        want = sorted((s, r) for _, _, u, s, r in cases if u is upstream)
        got = upstream.wait_messages(len(want))
        assert sorted((m.mail_from, m.rcpt_tos[0]) for m in got) == want
        assert logins(upstream) == {"relay@corp.example"}, \
            upstream.describe()
    assert_no_secret(daemon.log(), ("relay@corp.example", hub_pw))


def test_nullmailer_remotes_fail_over(tmp_path, pki, auth_upstream_factory,
                                      smarthostd_binary, daemons, closing):
    down_pw, up_pw = new_password("down"), new_password("up")
    # the first remote is unreachable: a port bound but not listening
    # refuses connections, and no other process can take it meanwhile
    down = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    down.bind(("127.0.0.1", 0))
    down_port = down.getsockname()[1]
    closing.append(down)
    up = auth_upstream_factory({"fallback@corp.example": up_pw})
    etc = tmp_path / "nullmailer"
    shutil.copytree(os.path.join(fixture_dir(), "nullmailer"), etc)
    fill(etc / "remotes", etc / "remotes", {
        "CA": pki.good.ca_cert, "DOWN_PORT": down_port, "UP_PORT": up.port,
        "DOWN_PW": down_pw, "UP_PW": up_pw})
    out, _, _ = run_import(tmp_path, "nullmailer", etc, [down_pw, up_pw])

    daemon = start_imported(smarthostd_binary, out, daemons)
    # adminaddr: local recipients go to the admin
    qid = send(daemon, "cron@corp.example", "www-data")
    daemon.wait_log(rf"{qid}: to=<admin@corp\.example>, relay=\S+, "
                    rf".*status=sent", timeout=30)
    got = up.wait_messages(1)
    assert [(m.mail_from, m.rcpt_tos) for m in got] == \
        [("cron@corp.example", ["admin@corp.example"])]
    assert logins(up) == {"fallback@corp.example"}, up.describe()
    assert_no_secret(daemon.log(), ("relay", down_pw),
                     ("fallback@corp.example", up_pw))
