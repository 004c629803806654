"""Who sent it: every message records the local user who submitted it
(Unix socket peer credentials, the owner of a loopback TCP client's socket
from the kernel's socket table), in the Received: header and the log; and
the sender policy that keeps one local user from sending as another."""

import json
import re

import pytest

from harness import (HOSTNAME, make_message, render_config, send_message,
                     smtp_client)
from localuser import ensure_user, open_for_user, python_as, require_root

# An SMTP client run as the test user: connects over "unix" (a path) or
# "tcp" (host and port), submits one message, prints the replies as JSON.
CLIENT = r"""
import json, smtplib, socket, sys
via, where, sender, message = sys.argv[1:5]
class UnixSMTP(smtplib.SMTP):
    def connect(self, host=None, port=0, source_address=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(where)
        return self.getreply()
if via == "unix":
    c = UnixSMTP(local_hostname="client.test", timeout=10)
    c.connect()
else:
    host, port = where.rsplit(":", 1)
    c = smtplib.SMTP(host.strip("[]"), int(port),
                     local_hostname="client.test", timeout=10)
c.ehlo()
out = {"mail": c.mail(sender)}
if out["mail"][0] == 250:
    out["rcpt"] = c.rcpt("b@example.net")
    out["data"] = c.data(message.encode())
c.quit()
print(json.dumps({k: [v[0], v[1].decode()] for k, v in out.items()}))
"""


def submit_as(user, via, where, sender, message):
    done = python_as(user, CLIENT, via, where, sender, message)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def uid_daemon(daemon_factory, upstream):
    """A daemon on a Unix socket, 127.0.0.1 and ::1, reachable by the test
    user; returns (daemon, "[::1]:port")."""
    def make(**overrides):
        daemon = daemon_factory(upstream.port, start=False, **overrides)
        daemon.settings["listen"].append({"address": "::1", "port": "0"})
        with open(daemon.config_path, "w", encoding="utf-8") as f:
            f.write(render_config(daemon.settings))
        open_for_user(daemon.workdir)
        daemon.start()
        v6 = re.search(r"listening on \[::1\]:(\d+)", daemon.log())
        assert v6, "no IPv6 listener"
        return daemon, f"[::1]:{v6.group(1)}"
    return make


def received_uid(message):
    match = re.search(r"\(smarthostd, from userid (\d+)\)",
                      message.parsed()["Received"])
    return int(match.group(1)) if match else None


def test_root_over_tcp_and_unix(uid_daemon, upstream):
    daemon, _ = uid_daemon()
    qid_tcp = send_message(daemon, make_message("tcp", "x\n"))
    qid_unix = send_message(daemon, make_message("unix", "x\n"), via="unix")
    got = upstream.wait_messages(2)
    assert [received_uid(m) for m in got] == [0, 0]
    daemon.wait_log(rf"{qid_tcp}: client=localhost\[127\.0\.0\.1\], uid=0$")
    daemon.wait_log(rf"{qid_unix}: client=localhost\[unix:uid=0\], uid=0$")


@pytest.mark.parametrize("via", ["unix", "tcp4", "tcp6"])
def test_unprivileged_user_recorded(uid_daemon, upstream, via):
    require_root()
    user = ensure_user()
    daemon, v6 = uid_daemon()
    where = {"unix": daemon.unix_path, "tcp4": f"127.0.0.1:{daemon.port}",
             "tcp6": v6}[via]
    out = submit_as(user, "unix" if via == "unix" else "tcp", where,
                    "a@example.org", make_message(via, "x\n").decode())
    assert out["data"][0] == 250, out
    qid = re.search(r"queued as (\w+)", out["data"][1]).group(1)
    got = upstream.wait_messages(1)[0]
    assert received_uid(got) == user.pw_uid
    daemon.wait_log(rf"{qid}: client=\S+, uid={user.pw_uid}$")


@pytest.mark.parametrize("via", ["unix", "tcp4"])
def test_sender_policy_own(uid_daemon, upstream, via):
    require_root()
    user = ensure_user()
    daemon, _ = uid_daemon(sender_policy={"mode": "own"})
    where = daemon.unix_path if via == "unix" else f"127.0.0.1:{daemon.port}"
    kind = "unix" if via == "unix" else "tcp"
    out = submit_as(user, kind, where, "ceo@company.example",
                    make_message("forged", "x\n").decode())
    assert out["mail"][0] == 553, out
    assert out["mail"][1] == ("5.7.1 <ceo@company.example>: sender not "
                              f"owned by user {user.pw_name}")
    daemon.wait_log(rf"uid={user.pw_uid}: sender <ceo@company\.example> "
                    rf"refused: not owned by user {user.pw_name}")

    own = f"{user.pw_name}@{HOSTNAME}"
    out = submit_as(user, kind, where, own,
                    make_message("own", "x\n", sender=own).decode())
    assert out["mail"][0] == 250 and out["data"][0] == 250, out
    got = upstream.wait_messages(1)[0]
    assert got.mail_from == own
    # root is exempt unless the exempt list says otherwise.
    send_message(daemon, make_message("root", "x\n"),
                 sender="ceo@company.example", via=kind)
    upstream.wait_messages(2)


def test_sender_policy_map(uid_daemon, upstream, tmp_path):
    require_root()
    user = ensure_user()
    policy = tmp_path / "sender-policy"
    policy.write_text(f"{user.pw_name}: news@company.example, @lists.example\n"
                      "%nogroup-here: *\n")
    policy.chmod(0o644)
    daemon, _ = uid_daemon(sender_policy={"mode": "map",
                                          "map": str(policy),
                                          "exempt": []})
    for sender, code in [("news@company.example", 250),
                         ("any@lists.example", 250),
                         ("ceo@company.example", 553)]:
        out = submit_as(user, "unix", daemon.unix_path, sender,
                        make_message("map", "x\n", sender=sender).decode())
        assert out["mail"][0] == code, (sender, out)
    # With an empty exempt list root is held to the policy too.
    client = smtp_client(daemon)
    try:
        code, text = client.mail("ceo@company.example")
    finally:
        client.quit()
    assert code == 553, text
    assert b"not owned by user root" in text


def test_sender_policy_own_includes_local_domains_and_rewrite_map(
        uid_daemon, upstream, tmp_path):
    require_root()
    user = ensure_user()
    sender_map = tmp_path / "sender-map"
    sender_map.write_text(f"{user.pw_name}: first.last@company.example\n")
    daemon, _ = uid_daemon(
        sender_policy={"mode": "own"},
        local_domains=["localhost", HOSTNAME, "corp.example"],
        sender_rewrite={"map": str(sender_map)})
    for sender, code in [(f"{user.pw_name}@corp.example", 250),
                         ("first.last@company.example", 250),
                         ("other.person@company.example", 553),
                         (f"{user.pw_name}@company.example", 553)]:
        out = submit_as(user, "unix", daemon.unix_path, sender,
                        make_message("own", "x\n", sender=sender).decode())
        assert out["mail"][0] == code, (sender, out)
