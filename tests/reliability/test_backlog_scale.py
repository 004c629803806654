"""The backlog benchmark (backlog.py) at the sizes doc/RELIABILITY.md
reports: a backlog queued with the upstream down, a restart on the same
spool, the upstream up and a flush. Every message must arrive exactly once
and the daemon's descriptors stay bounded whatever the backlog; restart
time, RSS, descriptors and drain rate are recorded, and speed is never
asserted. The long runs also assert the memory bound (issue 9): the peak
RSS after the restart at most a fixed base plus 64 bytes a queued message,
so under 100 MiB with a million (AddressSanitizer's shadow memory and
quarantine are not the daemon's: a sanitized daemon is held to the
descriptor bound only).

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
# Memory: a base that does not grow with the backlog (libraries, the
# active set of at most 4,096 envelopes read from disk, sessions, the
# worker threads' malloc arenas: 7 MiB with 1,000 queued, about 13 MiB
# once the active set is full), plus what each queued message may cost:
# its scheduler record and its spool log index entry, with their arrays'
# slack (16 to 24 and 32 to 40 bytes).
BASE_MIB = 16
BYTES_PER_MESSAGE = 64

RUNS = ([(1000, "smtp"), (100000, "smtp"), (1000000, "smtp")] if LONG
        else [(5000, "prefill")])


def sanitized(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


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
    peak_rss = number(r"^peak RSS\s+([\d.]+) MiB", out)
    figures(messages=messages, queued=how,
            restart_s=number(r"restart\s+([\d.]+) s", out),
            read_all_s=number(r"read all\s+([\d.]+) s", out),
            rss_read_all_mib=number(r"peak RSS by then ([\d.]+) MiB", out),
            peak_fds=number(r"^peak descriptors\s+(\d+)", out),
            peak_rss_mib=peak_rss,
            drain_msgs_per_s=number(r"drain\s+[\d.]+ s, (\d+) msgs/s", out),
            lost=0, duplicates=0)
    if LONG and not sanitized(smarthostd_binary):
        bound = BASE_MIB + messages * BYTES_PER_MESSAGE / 2**20
        assert peak_rss <= bound, \
            f"peak RSS {peak_rss} MiB with {messages} queued, bound {bound:.1f}"
        assert messages < 1000000 or peak_rss < 100, peak_rss
