"""Local users for the end-to-end suite: an unprivileged test user and the
maildrop group, created with useradd/groupadd when missing (the suite runs
as root on CI), and helpers that run a program as that user."""

import grp
import os
import pwd
import shutil
import subprocess

import pytest

TEST_USER = "shtest"
DROP_GROUP = "shtestdrop"


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a test user and runs as it")


def ensure_user(name=TEST_USER):
    """The pwd entry of name, created (no home, no login shell) if
    missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def ensure_group(name=DROP_GROUP):
    try:
        return grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True)
        return grp.getgrnam(name)


def as_user(user, argv, **kwargs):
    """subprocess.run of argv as user (a pwd entry), with the user's own
    groups and a clean environment."""
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
         "--init-groups", "--reset-env", "--", *argv], **kwargs)


def python_as(user, code, *args, timeout=30):
    """Runs Python code as user; returns the CompletedProcess (text)."""
    return as_user(user, ["/usr/bin/python3", "-c", code, *args],
                   capture_output=True, text=True, timeout=timeout)


def open_for_user(path):
    """Makes path and every directory above it searchable by others, so
    the test user can reach what the daemon's work directory holds."""
    path = os.path.abspath(path)
    while path not in ("/", ""):
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, (mode & 0o7777) | 0o011)
        path = os.path.dirname(path)


def setgid_copy(binary, directory, group):
    """A copy of binary in directory, group group, mode 2755: postdrop as
    make install sets it up."""
    target = os.path.join(directory, os.path.basename(binary))
    shutil.copy(binary, target)
    os.chown(target, 0, group.gr_gid)
    os.chmod(target, 0o2755)
    return target
