"""The crash loop: clients submit messages with unique ids while the daemon
is SIGKILLed at random moments and restarted, and the upstream (aiosmtpd)
is stopped and started at random. Every message that got a 250 must arrive
intact; duplicates are counted and reported; the spool ends empty.

Every duplicate is explained or the test fails. The daemon's log (it runs
with -d) says, per run, which messages it started to send ("scheduler
ready -> inflight"), which the upstream accepted ("status=sent"), which of
those it wrote down at once, unsynced ("delivery noted"), which it
deferred after the final dot had left ("may deliver it twice") and which it
removed. A SIGKILL keeps what the daemon wrote, synced or not, so a
message may arrive once more only for each run that was killed after it
started to send the message and before the note: after the final dot,
before the upstream's reply was read (not logged sent), or in the moment
between the reply and the note (logged sent, not noted); and once more for
each deferral after the final dot. Those are the windows smarthostd(8)
names. Any other copy (one sent again after its delivery was noted or its
removal logged, or two "status=sent" lines in one run) is a bug.
"""

import json
import os
import random
import re
import smtplib
import threading
import time
from collections import Counter

from conftest import scale
from harness import (CLIENT_HOSTNAME, free_port, make_message, random_body,
                     scaled)
from spoolread import live_files, live_ids

TOKEN_RE = re.compile(rb"^Subject: crash (\S+)\r$", re.MULTILINE)
# The queue id in smarthostd's own Received: header.
QID_RE = re.compile(rb"\(smarthostd[^)]*\) with \S+ id ([0-9A-F]{16})")
INFLIGHT_RE = re.compile(r"([0-9A-F]{16}): scheduler ready -> inflight$",
                         re.MULTILINE)
NOTED_RE = re.compile(r"([0-9A-F]{16}): delivery noted, not yet synced$",
                      re.MULTILINE)
SENT_RE = re.compile(r"([0-9A-F]{16}): to=<[^>]*>, .*status=sent ")
REMOVED_RE = re.compile(r"([0-9A-F]{16}): removed$", re.MULTILINE)
NO_REPLY_RE = re.compile(r"([0-9A-F]{16}): to=<[^>]*>, .*status=deferred "
                         r".*may deliver it twice")


class Clients:
    """Threads that submit messages over TCP to a fixed port until told to
    stop, 1 to 3 per connection, each with a unique token in its Subject.
    accepted maps token -> message for every 250 to the end of DATA."""

    def __init__(self, port, count, rng):
        self.port = port
        self.accepted = {}
        self.attempts = 0
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,
                         random.Random(rng.random())), daemon=True)
                         for i in range(count)]

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)
            assert not t.is_alive(), "a client thread hangs"

    def _run(self, index, rng):
        n = 0
        while not self._stop.is_set():
            try:
                client = smtplib.SMTP("127.0.0.1", self.port,
                                      local_hostname=CLIENT_HOSTNAME,
                                      timeout=10)
            except OSError:
                time.sleep(0.02)
                continue
            try:
                for _ in range(rng.randint(1, 3)):
                    n += 1
                    token = f"c{index}-{n}-{os.urandom(4).hex()}"
                    size = rng.choice((300, 2000, 20000, 150000))
                    message = make_message(f"crash {token}",
                                           random_body(size))
                    with self._lock:
                        self.attempts += 1
                    client.sendmail("a@example.org", ["b@example.net"],
                                    message)
                    with self._lock:
                        self.accepted[token] = message
                client.quit()
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.refused += 1
            finally:
                client.close()


class Arrivals:
    """The upstream's messages by token, read incrementally: the upstream
    runs in this process, so a poll that scanned every message again
    would take the interpreter from it, on a loaded machine for long
    enough that its greetings time out."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.by_token = {}
        self.seen = 0

    def update(self):
        messages = self.upstream.messages
        for m in messages[self.seen:]:
            match = TOKEN_RE.search(m.content)
            assert match, \
                f"relayed message without a token: {m.content[:300]!r}"
            self.by_token.setdefault(match.group(1).decode(), []).append(m)
        self.seen = len(messages)
        return self.by_token


def wait_while_delivering(predicate, arrivals, quiet, what):
    """Polls predicate() until it returns something true, and returns it;
    fails once quiet seconds have passed with no new message at the
    upstream. How long the whole takes is the machine's speed (under a
    load average of 18 a run took over 180 s to drain): only a drain that
    stopped is a failure. quiet is scaled by SMARTHOSTD_TIMEOUT_SCALE."""
    quiet = scaled(quiet)
    last, count = time.monotonic(), arrivals.seen
    while True:
        result = predicate()
        if result:
            return result
        if arrivals.seen != count:
            last, count = time.monotonic(), arrivals.seen
        elif time.monotonic() - last > quiet:
            raise AssertionError(f"no delivery for {quiet} s waiting for "
                                 f"{what}")
        time.sleep(0.2)


def spool_files(daemon, sub):
    path = os.path.join(daemon.settings["spool"], sub)
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


# Logged once a run has read every message it found at start.
READ_ALL = "every message found at start has been read"


class Run:
    """One run of the daemon: when it started and was killed, and what its
    log says it did with each message."""

    def __init__(self, started):
        self.started = started
        self.killed = None
        self.inflight = self.noted = self.removed = frozenset()
        self.sent = {}
        self.no_reply = {}
        self.read_all = False

    def read_log(self, text):
        self.inflight = frozenset(INFLIGHT_RE.findall(text))
        self.noted = frozenset(NOTED_RE.findall(text))
        self.removed = frozenset(REMOVED_RE.findall(text))
        self.sent = Counter(SENT_RE.findall(text))
        self.no_reply = Counter(NO_REPLY_RE.findall(text))
        self.read_all = READ_ALL in text


# Why a message arrived once more.
AFTER_250 = "killed after the upstream's 250, before the delivery was noted"
AFTER_DOT = "killed after the final dot, before the upstream's reply was read"
NO_REPLY = "no reply to the final dot in time, deferred"
UNEXPLAINED = "UNEXPLAINED"


def explain(qid, ncopies, runs):
    """The reasons for the ncopies - 1 extra copies of message qid, one
    per copy: the windows its runs left open, the sure ones first, and
    UNEXPLAINED for copies beyond them."""
    after_250, after_dot, no_reply = [], [], []
    for run in runs:
        if run.sent[qid] > 1:
            return [UNEXPLAINED] * (ncopies - 1)
        no_reply += [NO_REPLY] * run.no_reply[qid]
        if run.killed is None or qid in run.removed or qid in run.noted:
            continue
        if run.sent[qid]:
            after_250.append(AFTER_250)
        elif qid in run.inflight:
            after_dot.append(AFTER_DOT)
    windows = after_250 + no_reply + after_dot
    extra = ncopies - 1
    return windows[:extra] + [UNEXPLAINED] * max(0, extra - len(windows))


def spool_snapshot(daemon, first_seen, index):
    """What the stopped daemon's spool holds: the messages live in the log
    and their bytes, the log files that hold one, the messages in queue/,
    and how many restarts ago the oldest live message was first found
    (first_seen, updated, maps an id to that restart's index)."""
    live = live_files(daemon.settings["spool"], check_payload=False)
    for qid in live:
        first_seen.setdefault(qid, index)
    return {"live": len(live),
            "live_bytes": sum(size for _, size in live.values()),
            "files_with_live": len({name for name, _ in live.values()}),
            "queue_files": len(spool_files(daemon, "queue")),
            "oldest_age": max((index - first_seen[q] for q in live),
                              default=0),
            "oldest": min(live, key=lambda q: (first_seen[q], q),
                          default=None)}


# The size of a spool log file (SPOOLLOG_FILE_SIZE in spoollog.c).
LOG_FILE_SIZE = 8 << 20


def log_files_bound(live_bytes):
    """The most log files a restart may find for live_bytes of live
    message records: the log copies the oldest file's messages forward
    once the dead bytes behind it are a file's worth and twice its live
    ones, so it holds the live bytes, up to twice as many dead ones, and
    the file being written and the one before it, each partly filled (the
    unit test crash_loop_keeps_files_bounded_by_live_data checks the same
    bound with small files). A log that starts a file at every restart
    and keeps it while an older message lives exceeds it within a few
    kills."""
    return 3 + -(-3 * live_bytes // LOG_FILE_SIZE)


def median_ms(seconds):
    return round(1000 * sorted(seconds)[len(seconds) // 2], 1) \
        if seconds else None


def test_crash_loop(daemon_factory, upstream_factory, tmp_path, figures):
    kills = scale(10, 200)
    rng = random.Random(os.environ.get("RELIABILITY_SEED") or None)
    upstream = upstream_factory(tls=None)
    port = free_port()
    started = time.monotonic()
    daemon = daemon_factory(
        upstream.port,
        listen=[{"address": "127.0.0.1", "port": str(port)},
                {"path": str(tmp_path / "smtp.sock"), "mode": "0666"}],
        relays={"upstream": {"tls": "none", "timeout_command": 5}},
        queue={"retry_min": 1, "retry_max": 2})
    runs = [Run(started)]
    log_from = [daemon.run_start]
    clients = Clients(port, scale(4, 6), rng)
    clients.start()
    upstream_restarts = 0
    # Each restart's time (exec to "started", as the harness polls it) and
    # the log files it found: a loop of crashes must not make either grow
    # (a restart starts a new log file, and the old ones must still go).
    restarts, log_files = [], []
    # What the spool held at each restart (spool_snapshot), and the restart
    # at which each live message was first found.
    spool_at_restart, first_seen = [], {}
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.01, 0.5))
            runs[-1].killed = time.monotonic()
            daemon.kill()
            if rng.random() < 0.15:
                upstream.stop()
                upstream_restarts += 1
                time.sleep(rng.uniform(0, 0.5))
                upstream.start()
            runs.append(Run(time.monotonic()))
            log_files.append(len(spool_files(daemon, "log")))
            spool_at_restart.append(spool_snapshot(daemon, first_seen,
                                                   len(restarts)))
            daemon.start()
            restarts.append(time.monotonic() - runs[-1].started)
            log_from.append(daemon.run_start)
    finally:
        clients.stop()
    accepted = clients.accepted
    daemon.flush()

    arrivals = Arrivals(upstream)

    def arrived():
        got = arrivals.update()
        if not set(accepted) <= set(got) or spool_files(daemon, "queue") \
                or live_ids(daemon.settings["spool"]):
            return None
        return got

    drain_started = time.monotonic()
    try:
        got = wait_while_delivering(arrived, arrivals, 180,
                                    "every accepted message upstream, an "
                                    "empty queue/ and nothing in the log")
    except AssertionError:
        got = None
    got_now = {t: list(c) for t, c in arrivals.update().items()}
    drain_seconds = time.monotonic() - drain_started
    lost = sorted(set(accepted) - set(got_now))
    corrupted = [t for t in accepted if t in got_now and not all(
        m.content.endswith(accepted[t]) and m.rcpt_tos == ["b@example.net"]
        for m in got_now[t])]
    unacknowledged = len(set(got_now) - set(accepted))
    assert daemon.terminate() == 0, "the daemon failed to stop cleanly"
    raw = daemon.log().encode()
    for run, begin, end in zip(runs, log_from, log_from[1:] + [len(raw)]):
        run.read_log(raw[begin:end].decode("utf-8", errors="replace"))

    reasons = Counter()
    unexplained = []
    to_kill = []
    for token, copies in got_now.items():
        match = QID_RE.search(copies[0].content)
        assert match, f"no queue id in {copies[0].content[:300]!r}"
        qid = match.group(1).decode()
        why = explain(qid, len(copies), runs)
        reasons.update(why)
        if UNEXPLAINED in why:
            unexplained.append((token, qid, len(copies)))
        # How long before a kill the upstream took a copy that was
        # sent again: the last copy before each kill that left it open.
        for run in runs:
            if run.killed is not None and qid in run.inflight and \
                    qid not in run.removed:
                before = [run.killed - c.at for c in copies
                          if run.started <= c.at <= run.killed]
                if before:
                    to_kill.append(min(before))
    duplicates = sum(reasons.values())
    # Messages each kill found delivered and not yet removed: with the
    # note, those are no longer duplicates; before it, each was one.
    unrecorded = [sum(1 for q in r.sent if q not in r.removed)
                  for r in runs if r.killed is not None]
    to_kill.sort()
    quarter = max(1, len(restarts) // 4)
    if os.environ.get("CRASH_LOOP_TRACE"):
        # Each restart's time, log files and spool_snapshot(), one JSON
        # object a line, for a closer look than the figures give.
        with open(os.environ["CRASH_LOOP_TRACE"], "w",
                  encoding="utf-8") as trace:
            for t, n, snap in zip(restarts, log_files, spool_at_restart):
                trace.write(json.dumps(dict(snap, restart_ms=round(
                    1000 * t, 1), log_files=n)) + "\n")
        with open(os.environ["CRASH_LOOP_TRACE"] + ".log", "wb") as copy:
            copy.write(raw)
    figures(restart_ms_median_first_quarter=median_ms(restarts[:quarter]),
            restart_ms_median_last_quarter=median_ms(restarts[-quarter:]),
            log_files_at_restart_max=max(log_files, default=0),
            log_files_beyond_bound=sum(
                1 for n, snap in zip(log_files, spool_at_restart)
                if n > log_files_bound(snap["live_bytes"])),
            log_files_at_restart_last_quarter_max=max(
                log_files[-quarter:], default=0),
            live_at_restart_last_quarter_max=max(
                (a["live"] for a in spool_at_restart[-quarter:]), default=0),
            live_kib_at_restart_last_quarter_max=max(
                (a["live_bytes"] // 1024 for a in spool_at_restart[-quarter:]),
                default=0),
            files_with_live_at_restart_last_quarter_max=max(
                (a["files_with_live"] for a in spool_at_restart[-quarter:]),
                default=0),
            queue_files_at_restart_last_quarter_max=max(
                (a["queue_files"] for a in spool_at_restart[-quarter:]),
                default=0),
            oldest_live_age_in_restarts_max=max(
                (a["oldest_age"] for a in spool_at_restart), default=0),
            runs_killed_before_reading_all=sum(
                1 for r in runs if r.killed is not None and not r.read_all),
            kills=kills, upstream_restarts=upstream_restarts,
            messages_accepted=len(accepted), submissions=clients.attempts,
            sessions_cut=clients.refused,
            arrived_without_250=unacknowledged, lost=len(lost),
            corrupted=len(corrupted), duplicates=duplicates,
            duplicates_per_kill=round(duplicates / kills, 2),
            duplicate_reasons=dict(reasons),
            unrecorded_at_kill_mean=round(sum(unrecorded) / kills, 2),
            unrecorded_at_kill_max=max(unrecorded, default=0),
            delivered_to_kill_ms_median=round(
                1000 * to_kill[len(to_kill) // 2], 1) if to_kill else None,
            delivered_to_kill_ms_max=round(1000 * to_kill[-1], 1)
            if to_kill else None,
            drain_seconds=round(drain_seconds, 1),
            seconds=round(time.monotonic() - started, 1))
    assert not lost, f"{len(lost)} accepted messages lost: {lost[:10]}"
    too_many = [(i + 1, n, snap["live_bytes"]) for i, (n, snap) in
                enumerate(zip(log_files, spool_at_restart))
                if n > log_files_bound(snap["live_bytes"])]
    assert not too_many, "log files beyond the live data's bound at " \
        f"restarts (restart, files, live bytes): {too_many[:10]}"
    assert not corrupted, f"corrupted in transit: {corrupted[:10]}"
    assert not unexplained, "copies not explained by a crash window " \
        f"(token, queue id, copies): {unexplained[:10]}"
    assert got is not None, "queue/ or the log not empty at the end: " + \
        ", ".join((spool_files(daemon, "queue") +
                   sorted(live_ids(daemon.settings["spool"])))[:10])
    assert spool_files(daemon, "tmp") == []
    assert spool_files(daemon, "corrupt") == [], "files moved to corrupt/"
