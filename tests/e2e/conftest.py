"""Fixtures of the end-to-end suite: the test PKI, upstreams and daemons.

Each factory fixture stops what it started when the test ends. When a test
fails, the log of every daemon it ran is attached to the report.
"""

import os
from types import SimpleNamespace

import pytest

from authharness import (AuthUpstream, OAuthUpstream, new_password,
                         smarthostctl_binary)
from harness import (Daemon, Upstream, base_settings, checker_reports,
                     issue_server_cert, make_ca, merge_settings)
from localuser import DROP_GROUP, ensure_group, open_for_user


@pytest.fixture(scope="session")
def smarthostd_binary():
    binary = os.environ.get("SMARTHOSTD")
    if not binary and os.environ.get("TOP_BUILDDIR"):
        binary = os.path.join(os.environ["TOP_BUILDDIR"], "src", "smarthostd")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"SMARTHOSTD must name the built daemon (got {binary!r})")
    return binary


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """Server certificates: "good" for localhost, 127.0.0.1 and ::1 from
    the CA the daemon trusts; "rogue" for the same names from an unrelated
    CA; "misnamed" from the trusted CA for another host name only."""
    directory = str(tmp_path_factory.mktemp("pki"))
    trusted = make_ca(directory, "trusted")
    unknown = make_ca(directory, "unknown")
    return SimpleNamespace(
        good=issue_server_cert(trusted, "good"),
        rogue=issue_server_cert(unknown, "rogue"),
        misnamed=issue_server_cert(trusted, "misnamed",
                                   san="DNS:elsewhere.example"))


class ServerFactory:
    """A test's server factory: calling it builds a server with build(),
    starts it unless start=False, and remembers it; stop_all() stops
    every one (and lets its port go) when the test ends."""

    def __init__(self, build):
        self.build = build
        self.made = []

    def __call__(self, *args, start=True, **kwargs):
        server = self.build(*args, **kwargs)
        self.made.append(server)
        if start:
            server.start(may_move=True)
        return server

    def stop_all(self):
        for server in self.made:
            server.close()


def _pair(pki, tls):
    return getattr(pki, tls) if tls else None


@pytest.fixture
def upstream_factory(pki):
    """upstream_factory(tls="good"|"rogue"|"misnamed"|None, start=True,
    implicit=False, rcpt_replies=..., data_replies=...) -> Upstream."""
    factory = ServerFactory(lambda tls="good", **handler_args: Upstream(
        tls=_pair(pki, tls), **handler_args))
    yield factory
    factory.stop_all()


@pytest.fixture
def auth_upstream_factory(pki):
    """auth_upstream_factory(users, tls="good"|None, mechanisms=...,
    required=True, reject=..., rcpt_unauthenticated=...) -> AuthUpstream,
    started."""
    factory = ServerFactory(lambda users, tls="good", **kwargs: AuthUpstream(
        users, tls=_pair(pki, tls), **kwargs))
    yield factory
    factory.stop_all()


@pytest.fixture
def oauth_upstream_factory(pki):
    """oauth_upstream_factory(tokens, mechanisms=("XOAUTH2",)) -> an
    OAuthUpstream with STARTTLS (trusted CA), started."""
    factory = ServerFactory(lambda tokens, **kwargs: OAuthUpstream(
        {}, tokens, tls=pki.good, **kwargs))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def ctl():
    """The smarthostctl built next to the daemon (see
    authharness.smarthostctl_binary)."""
    binary = smarthostctl_binary()
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"smarthostctl not found next to SMARTHOSTD "
                    f"(got {binary!r}; set SMARTHOSTCTL)")
    return binary


@pytest.fixture
def password():
    return new_password()


@pytest.fixture
def authinfo(tmp_path):
    """The path of the daemon's (only) credential file; not created."""
    return str(tmp_path / "authinfo")


@pytest.fixture
def upstream(upstream_factory):
    """A recording upstream offering STARTTLS with the trusted CA."""
    return upstream_factory()


@pytest.fixture
def daemon_factory(request, smarthostd_binary, pki):
    """daemon_factory(relay_port, start=True, env=None, **overrides)
    -> Daemon.

    overrides are merged into the test config (see base_settings), e.g.
    limits={"max_message_size": "100K"} or relays={"upstream": {...}};
    env holds variables added to the daemon's environment.
    """
    made = []
    request.node.smarthostd_daemons = made

    def make(relay_port, start=True, env=None, **overrides):
        def settings(workdir):
            return merge_settings(
                base_settings(workdir, relay_port, pki.good.ca_cert),
                overrides)
        daemon = Daemon(smarthostd_binary, settings,
                        name=f"smarthostd #{len(made) + 1}", env=env)
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    problems, reports = [], []
    for daemon in made:
        problem = daemon.close()
        if problem:
            problems.append(problem)
        reports += [f"{daemon.name}: {line}"
                    for line in checker_reports(daemon.log())]
    if reports:
        problems.append("sanitizer or valgrind reports in the daemon's "
                        "log:\n" + "\n".join(reports))
    if problems:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(
            f"--- {d.name} log:\n{d.log()[-4000:]}" for d in made),
            pytrace=False)


@pytest.fixture
def daemon(daemon_factory, upstream):
    """The daemon relaying to the default upstream."""
    return daemon_factory(upstream.port)


def _tool_next_to_daemon(smarthostd_binary, name, variable=None):
    """The built tool name next to the daemon, or the one the variable
    names."""
    binary = (variable and os.environ.get(variable)) or os.path.join(
        os.path.dirname(smarthostd_binary), name)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no {name} at {binary!r}" +
                    (f" (set {variable})" if variable else ""))
    return binary


@pytest.fixture(scope="session")
def sendmail_binary(smarthostd_binary):
    return _tool_next_to_daemon(smarthostd_binary, "smarthost-sendmail",
                                "SMARTHOST_SENDMAIL")


@pytest.fixture(scope="session")
def postdrop_binary(smarthostd_binary):
    # Not from SMARTHOST_POSTDROP: that one tells sendmail what to run.
    return _tool_next_to_daemon(smarthostd_binary, "smarthost-postdrop")


@pytest.fixture
def stopped_daemon(daemon_factory, upstream):
    """A daemon that ran once (so its maildrop exists) and is stopped,
    its work directory reachable by the test user."""
    daemon = daemon_factory(upstream.port, start=False,
                            maildrop_group=DROP_GROUP)
    if os.geteuid() == 0:
        ensure_group()
        open_for_user(daemon.workdir)
    daemon.start()
    assert daemon.terminate() == 0
    return daemon


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for daemon in getattr(item, "smarthostd_daemons", []):
        report.sections.append(
            (f"{daemon.name} log ({report.when})", daemon.log()))


@pytest.fixture
def notify_socket(tmp_path):
    """A NotifySocket (a stand-in for systemd's NOTIFY_SOCKET) in a
    temporary directory."""
    from harness import NotifySocket
    sock = NotifySocket(str(tmp_path))
    yield sock
    sock.close()
