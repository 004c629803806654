"""Config checking (-t) and graceful stop."""

import os
import re
import signal
import smtplib

import pytest

from harness import (CLIENT_HOSTNAME, EX_CONFIG, RawSMTP, assert_relayed,
                     check_config, delivery_line, make_message, queue_id,
                     render_config, scaled)

BROKEN_CONFIGS = {
    "syntax": """\
hostname = "relay.example.org";
queue = {
  retry_min = ;  # BAD
};
""",
    "tls-mode": """\
relays = {
  upstream = {
    type = "smtp";
    host = "127.0.0.1";
    tls = "sometimes";  # BAD
  };
};
""",
    "relay-type": """\
relays = {
  upstream = {
    type = "carrier-pigeon";  # BAD
    host = "127.0.0.1";
  };
};
""",
    "duration": """\
queue = {
  retry_min = "5 fortnights";  # BAD
};
""",
    "size": """\
limits = {
  max_line = 2048;
  max_message_size = "12Q";  # BAD
};
""",
    "default-relay": """\
relays = {
  upstream = { type = "smtp"; host = "127.0.0.1"; };
};
default_relay = "nowhere";  # BAD
""",
}


@pytest.mark.parametrize("name", sorted(BROKEN_CONFIGS))
def test_check_rejects_broken_config(smarthostd_binary, tmp_path, name):
    text = BROKEN_CONFIGS[name]
    bad_line = next(number for number, line
                    in enumerate(text.splitlines(), start=1)
                    if "# BAD" in line)
    path = tmp_path / f"{name}.conf"
    path.write_text(text)
    result = check_config(smarthostd_binary, path)
    output = result.stdout + result.stderr
    assert result.returncode == EX_CONFIG, output
    assert f"{path}:{bad_line}" in output, output


def test_check_accepts_full_config(smarthostd_binary, pki, tmp_path):
    """Every documented setting, with valid values."""
    settings = {
        "hostname": "relay.example.org",
        "spool": str(tmp_path / "spool"),
        "spool_sync": "fsync",
        "shutdown_timeout": 30,
        "listen": [
            {"address": "127.0.0.1", "port": "2525"},
            {"address": "::1", "port": "2525"},
            {"address": "192.0.2.10", "port": "2525"},
            {"path": str(tmp_path / "smtp.sock"), "mode": "0660",
             "group": "mail"},
        ],
        "allow_networks": ["192.0.2.0/24", "2001:db8::/32"],
        "limits": {"max_line": 2048, "max_message_size": "35M",
                   "max_recipients": 1000, "max_sessions": 100,
                   "max_errors": 10, "idle_timeout": "5m",
                   "session_timeout": "10m", "max_sessions_per_client": 50},
        "queue": {"retry_min": 300, "retry_max": "1h", "lifetime": "5d",
                  "workers": 4},
        "user": "nobody",
        "auth_first": [r"^smtp\.example\.com$", "(^|\\.)gmail\\.com$"],
        "authinfo": ["~/.authinfo", "~/.authinfo.gpg", "~/.netrc",
                     str(tmp_path / "authinfo")],
        "state_dir": str(tmp_path / "state"),
        "control_socket": str(tmp_path / "control.sock"),
        "default_relay": "upstream",
        "relays": {
            "upstream": {
                "type": "smtp", "host": "smtp.example.com", "port": "587",
                "tls": "starttls", "verify": True,
                "ca_file": pki.good.ca_cert, "helo": "relay.example.org",
                "user": "me@example.com", "max_connections": 4,
                "max_messages_per_connection": 100, "timeout_connect": 30,
                "timeout_command": 300, "timeout_data": 600,
                "auth": "auto", "allow_plaintext_auth": False,
                "mechanisms": ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN",
                               "LOGIN"],
                "password_command": "pass show smtp.example.com",
            },
            "submissions": {"type": "smtp", "host": "192.0.2.25",
                            "tls": "implicit", "auth": "always",
                            "allow_plaintext_auth": True},
            "oauth": {"type": "smtp", "host": "smtp.gmail.com",
                      "user": "me@gmail.com", "auth": "always",
                      "mechanisms": ["OAUTHBEARER", "XOAUTH2"],
                      "oauth_command": "oauth2-token me@gmail.com"},
            "plain": {"type": "smtp", "host": "192.0.2.26", "tls": "none",
                      "auth": "never"},
            "capture": {"type": "maildir",
                        "path": str(tmp_path / "Maildir")},
        },
    }
    path = tmp_path / "smarthostd.conf"
    path.write_text(render_config(settings))
    result = check_config(smarthostd_binary, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_graceful_stop(daemon):
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        daemon.signal(signal.SIGTERM)
        rest = smtp.wait_closed(timeout=10)
    assert rest.startswith(b"421"), f"idle session got {rest!r}"
    assert daemon.proc.wait(scaled(15)) == 0
    stopping = daemon.wait_log(r"\bstopping\b")
    stopped = daemon.wait_log(r"\bstopped\b")
    assert stopping.start() < stopped.start()


def test_stop_finishes_open_transaction(daemon, upstream):
    message = make_message("in flight at SIGTERM", "Half now,\nhalf later.\n")
    half = len(message) // 2
    with RawSMTP(daemon.port) as smtp:
        smtp.greet()
        smtp.begin_data()
        smtp.send(message[:half])
        daemon.signal(signal.SIGTERM)
        daemon.wait_log(r"\bstopping\b")
        smtp.send(message[half:] + b".\r\n")
        reply = smtp.reply()
        assert reply.code == 250, reply
        qid = queue_id(reply.text)
        assert smtp.wait_closed(timeout=10).startswith(b"421")
    assert daemon.proc.wait(scaled(15)) == 0

    # Whether or not it left before the stop, it arrives exactly once.
    daemon.start()
    daemon.flush()
    msg, = upstream.wait_messages(1, timeout=15)
    assert_relayed(msg, message)
    upstream.assert_count_stays(1, settle=2)
    assert qid in daemon.log()


def test_check_accepts_shipped_config(smarthostd_binary, tmp_path):
    """The commented example etc/smarthostd.conf, as installed, passes -t
    (with user = "nobody" when its user does not exist here)."""
    top = os.environ.get("TOP_SRCDIR") or os.path.join(
        os.path.dirname(__file__), "..", "..")
    with open(os.path.join(top, "etc", "smarthostd.conf"),
              encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"^relays\s*=", text, re.M), "not the shipped config"
    text, n = re.subn(r'^user = "smarthostd";', 'user = "nobody";', text,
                      flags=re.M)
    path = tmp_path / "smarthostd.conf"
    path.write_text(text)
    result = check_config(smarthostd_binary, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_helo_then_sigint(daemon, upstream):
    """A client that says HELO, not EHLO, submits end to end; SIGINT then
    stops the daemon as gracefully as SIGTERM does."""
    message = make_message("sent after HELO", "An RFC 821 client.\n")
    client = smtplib.SMTP("127.0.0.1", daemon.port,
                          local_hostname=CLIENT_HOSTNAME, timeout=10)
    try:
        code, reply = client.helo()
        assert code == 250, reply
        assert not client.does_esmtp
        refused = client.sendmail("a@example.org", ["b@example.net"],
                                  message)
        assert refused == {}
        client.quit()
    finally:
        client.close()
    msg, = upstream.wait_messages(1)
    assert_relayed(msg, message)
    qid = re.search(r"([0-9A-F]{16}): client=", daemon.log()).group(1)
    daemon.wait_log(delivery_line(qid, "b@example.net", "sent"))

    daemon.signal(signal.SIGINT)
    assert daemon.proc.wait(scaled(15)) == 0
    stopping = daemon.wait_log(r"\bstopping\b")
    stopped = daemon.wait_log(r"\bstopped\b")
    assert stopping.start() < stopped.start()
