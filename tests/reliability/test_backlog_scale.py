"""The backlog benchmark (backlog.py) at the sizes doc/RELIABILITY.md
reports: a backlog queued with the upstream down, a restart on the same
spool, the upstream up and a flush. Every message must arrive exactly once
and the daemon's descriptors stay bounded whatever the backlog; restart
time, RSS, descriptors and drain rate are recorded, never asserted.

Short (make check): 5,000 messages written into the spool. Long (make
check-reliability): 1,000, 100,000 and 1,000,000 submitted over SMTP
(Postfix's smtp-source when installed, else Python's smtplib), so that the
large backlogs are in the spool log as the daemon writes it; the million
takes most of an hour on two cores.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import LONG

HERE = os.path.dirname(os.path.abspath(__file__))
SMTP_SOURCE = "/usr/sbin/smtp-source"
# Sessions, connections and a fixed spool share (backlog.py --check).
MAX_FDS = 300

RUNS = ([(1000, "smtp"), (100000, "smtp"), (1000000, "smtp")] if LONG
        else [(5000, "prefill")])


def number(pattern, text):
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"/{pattern}/ not in the benchmark's output:\n{text}"
    return float(m.group(1))


@pytest.mark.parametrize("messages,how", RUNS)
def test_backlog_exactly_once_bounded(smarthostd_binary, tmp_path, figures,
                                      messages, how):
    args = [sys.executable, os.path.join(HERE, "backlog.py"),
            "--smarthostd", smarthostd_binary, "-n", str(messages),
            "--nofile", "20000", "--check", "--max-fds", str(MAX_FDS),
            "--drain-timeout", str(max(600, messages // 100))]
    if how == "prefill":
        args.append("--prefill")
    elif not os.access(SMTP_SOURCE, os.X_OK):
        args += ["--client", "python"]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=dict(os.environ, TMPDIR=str(tmp_path)),
                       timeout=max(1200, messages // 20))
    out = r.stdout.decode(errors="replace")
    print(out)
    assert r.returncode == 0, out
    assert (f"upstream got      {messages} messages, {messages} unique, "
            "0 duplicates") in out, out
    figures(messages=messages, queued=how,
            restart_s=number(r"restart\s+([\d.]+) s", out),
            read_all_s=number(r"read all\s+([\d.]+) s", out),
            peak_fds=number(r"^peak descriptors\s+(\d+)", out),
            peak_rss_mib=number(r"^peak RSS\s+([\d.]+) MiB", out),
            drain_msgs_per_s=number(r"drain\s+[\d.]+ s, (\d+) msgs/s", out),
            lost=0, duplicates=0)
