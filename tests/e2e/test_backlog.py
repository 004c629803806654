"""A small backlog through a restart: tests/reliability/backlog.py with
2,000 messages queued while the upstream is down, the daemon restarted on
the same spool, then the upstream up and a flush. Every message must reach
the upstream exactly once, and the daemon's descriptors must stay far below
one per queued message. Timing is printed, never asserted; the full-size
runs (100,000 and more) are behind make check-reliability.
"""

import os
import subprocess
import sys

# Base descriptors (listeners, control socket, spool directories, event
# loop, worker pipes), QUEUE_SPARES (64) idle spare files, QUEUE_GROUP_MAX
# (128) files of one sync group, the relay's sessions: a bound independent
# of the 2,000 queued.
MAX_FDS = 300


def test_backlog_restart_delivers_each_once_with_bounded_fds(
        smarthostd_binary, tmp_path):
    script = os.path.join(os.environ["TOP_SRCDIR"], "tests", "reliability",
                          "backlog.py")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, script,
                        "--smarthostd", smarthostd_binary,
                        "--messages", "2000", "--clients", "10",
                        "--size", "2048", "--client", "python",
                        "--check", "--max-fds", str(MAX_FDS),
                        "--drain-timeout", "300"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=env, timeout=600)
    out = r.stdout.decode(errors="replace")
    print(out)
    assert r.returncode == 0, out
    assert "upstream got      2000 messages, 2000 unique, 0 duplicates" \
        in out, out
