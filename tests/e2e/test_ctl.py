"""smarthostctl's queue commands against a running daemon, and the
-h/--help and -V/--version every program answers."""

import os
import subprocess

import pytest

from authharness import smarthostctl_binary

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


def test_long_options_beside_short(tmp_path):
    """smarthostd --test --config FILE checks a file as -t -c does."""
    bad = tmp_path / "bad.conf"
    bad.write_text("relays = (\n")
    r = run(program("smarthostd"), "--test", "--config", str(bad))
    assert r.returncode == 78, r
    assert str(bad) in r.stderr

