"""Crash consistency beyond SIGKILL: what a power cut can leave on disk.

The daemon runs under strace while clients submit messages (the upstream
down at first, so state records are appended, then up, so messages are
delivered, removed and their files reused, log files among them: small
ones, so that some are emptied and renamed to be written again, their old
records still after the new ones). crashfs.py turns the trace
into file-system operations and constructs every crash state its model
allows (persisted prefixes, only what was synced, each un-synced operation
left out, the last un-synced write torn). Each state is written to a
directory and loaded with the daemon's own queue reader (spoolcheck); every
message answered 250 before the cut, and not yet being removed, must be
there, intact, with its recipient; no message may load corrupted.

Short (make check): 6 messages. Long (make check-reliability): 30.
"""

import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time

from conftest import scale
from crashfs import Tracer, apply, crash_states, durable_sets
from spoolread import live_ids, tombstones
from harness import daemon_spawn, make_message, random_body, scaled, \
    send_message, wait_until

TRACED = ("openat,open,creat,close,dup,dup2,dup3,fcntl,write,writev,"
          "pwrite64,pwritev,pwritev2,sendto,sendmsg,ftruncate,fallocate,"
          "lseek,rename,renameat,renameat2,unlink,unlinkat,link,linkat,"
          "mkdir,mkdirat,fsync,fdatasync,syncfs,sync,sync_file_range")
TOKEN_RE = re.compile(rb"Subject: cut (\S+)\r\n")


def spoolcheck_binary():
    binary = os.environ.get("SPOOLCHECK") or os.path.join(
        os.environ.get("TOP_BUILDDIR", "."), "tests", "reliability",
        "spoolcheck")
    assert os.access(binary, os.X_OK), f"no spoolcheck at {binary}"
    return binary


def snapshot(spool):
    """The files (path relative to spool -> bytes) and directories."""
    files, dirs = {}, set()
    for top, subdirs, names in os.walk(spool):
        rel = os.path.relpath(top, spool)
        rel = "" if rel == "." else rel
        dirs.add(rel)
        for name in names:
            with open(os.path.join(top, name), "rb") as f:
                files[os.path.join(rel, name)] = f.read()
    return files, dirs


def materialize(tree, dirs, where):
    shutil.rmtree(where, ignore_errors=True)
    for d in sorted(dirs):
        os.makedirs(os.path.join(where, d), exist_ok=True)
    for path, content in tree.items():
        if os.path.dirname(path) not in dirs:
            continue
        # Preallocated log files are mostly zeros: written sparse.
        data = content.rstrip(b"\0")
        with open(os.path.join(where, path), "wb") as f:
            f.write(data)
            f.truncate(len(content))


def load(binary, spool):
    """spoolcheck's view: qid -> (sender, [(rcpt, status)], body)."""
    result = subprocess.run([binary, spool], capture_output=True,
                            timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr)
    loaded = {}
    for line in result.stdout.decode().splitlines():
        _, qid, sender, _flags, _attempts, rcpts, body = line.split(" ")
        rcpt_list = []
        for item in rcpts.split(","):
            addr, status = item.split("=")
            rcpt_list.append((bytes.fromhex(addr).decode(), int(status)))
        loaded[qid] = (bytes.fromhex(sender).decode(), rcpt_list,
                       b"" if body == "-" else bytes.fromhex(body))
    return loaded, result.stderr.decode(errors="replace")


def verdict(result, accepted):
    """What one loaded state holds: the ids of the messages that loaded
    intact, descriptions of those that loaded corrupted, the reader's
    complaints. (Only this is kept per state, not the bodies.)"""
    loaded, errors = result
    intact, corrupted = set(), []
    for qid, (sender, rcpts, body) in loaded.items():
        sent = accepted.get(qid)
        if sent is None or not body.endswith(sent) \
                or rcpts[0][0] != "b@example.net":
            match = TOKEN_RE.search(body)
            corrupted.append(f"{qid} loaded corrupted ({len(body)} bytes, "
                             f"token {match and match.group(1)})")
        else:
            intact.add(qid)
    return intact | {c.split()[0] for c in corrupted}, corrupted, errors


REUSE = 3  # messages submitted once the log's files emptied


def run_traced(daemon, upstream, count, trace):
    """Runs the daemon under strace through both phases, and then once
    everything was delivered, REUSE messages of 5 KB more (each fills a log
    file of 4 KB, so they go into files reused); returns the messages
    accepted (qid -> message)."""
    # LeakSanitizer cannot stop threads of a traced process (it uses
    # ptrace itself): no leak check for this one run (every other test
    # does it).
    daemon_spawn(daemon, prefix=[
        "strace", "-f", "-qq", "-y", "-xx", "-s", "4194304", "-o",
        str(trace), "-e", f"trace={TRACED}", "-e", "signal=none"],
        env=dict(daemon.env, ASAN_OPTIONS="detect_leaks=0"))
    match = wait_until(
        lambda: re.search(r"started, pid=(\d+)", daemon.log(daemon.run_start)),
        60, "the traced daemon to start")
    pid = int(match.group(1))
    daemon.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                daemon.log(daemon.run_start)).group(1))
    accepted = {}

    def submit(i):
        size = (200, 5000, 70000)[i % 3] if i < count else 5000
        message = make_message(f"cut m{i}-{os.urandom(3).hex()}",
                               random_body(size))
        accepted[send_message(daemon, message, timeout=60)] = message

    queue = os.path.join(daemon.settings["spool"], "queue")

    def drained(n):
        wait_until(lambda: len(upstream.messages) >= n
                   and not os.listdir(queue)
                   and not live_ids(daemon.settings["spool"]), 120,
                   "every message delivered, queue/ empty, nothing in "
                   "the log")

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # Upstream down: commits, then deferrals append state records.
        list(pool.map(submit, range(count // 2)))
        since = len(daemon.log())
        wait_until(lambda: len(re.findall(r"deferred|connect",
                                          daemon.log(since))) >= 2,
                   30, "delivery attempts to fail")
        time.sleep(1.5)
        # Upstream up: deliveries, removals, file reuse, new commits.
        upstream.start()
        list(pool.map(submit, range(count // 2, count)))
        os.kill(pid, signal.SIGUSR1)
        drained(count)
        # The emptied log files, two of them kept, take the next ones.
        list(pool.map(submit, range(count, count + REUSE)))
    drained(count + REUSE)
    os.kill(pid, signal.SIGTERM)
    assert daemon.proc.wait(scaled(60)) == 0, \
        "the traced daemon did not stop well"
    return accepted


def test_power_cut_states(daemon_factory, upstream_factory, tmp_path,
                          figures):
    count = scale(6, 30)
    binary = spoolcheck_binary()
    upstream = upstream_factory(tls=None, start=False)
    # Log files of 4 KB: the run empties some and reuses them.
    daemon = daemon_factory(upstream.port,
                            relays={"upstream": {"tls": "none"}},
                            queue={"retry_min": 1, "retry_max": 1},
                            spool_log_file_size="4k")
    # The spool's directories exist, durably, before the traced run, and
    # a log file with a message in it (the upstream is down): the traced
    # start goes on writing in that file (spoollog.c, file_continue), so
    # its cut, preallocation and sync are in the model too.
    first = make_message(f"cut m-first-{os.urandom(3).hex()}",
                         random_body(200))
    first_qid = send_message(daemon, first, timeout=60)
    assert daemon.terminate() == 0
    spool = daemon.settings["spool"]
    os.sync()
    initial, initial_dirs = snapshot(spool)
    trace = tmp_path / "trace"
    started = time.monotonic()
    accepted = run_traced(daemon, upstream, count, trace)
    accepted[first_qid] = first

    tracer = Tracer(os.path.realpath(spool), initial, initial_dirs)
    with open(trace, encoding="ascii", errors="replace") as f:
        tracer.feed(f)
    ops = tracer.ops
    assert not tracer.unknown, f"unmodelled spool calls: {tracer.unknown}"
    # The model must reproduce the real run: same files, same bytes.
    final, _ = snapshot(spool)
    assert {p: hashlib.sha256(c).hexdigest()
            for p, c in tracer.final_tree().items()} == {
        p: hashlib.sha256(c).hexdigest() for p, c in final.items()}, \
        "the trace model disagrees with the spool the daemon left"
    queued_at = {op.qid: i for i, op in enumerate(ops) if op.kind == "queued"}
    queued_at[first_qid] = -1       # answered before the trace
    assert set(queued_at) == set(accepted), "250 replies missing in trace"
    # Where each message's removal starts: its file leaves queue/, or a
    # tombstone for it is written to the log. A log file's records are
    # salted with its seq, its name, which changes when a dead file is
    # renamed to be reused: each write is read with the name its file had
    # then.
    removed_at = {}
    logged = set()
    seq_of = {inode: int(os.path.basename(path), 16)
              for path, inode in tracer.initial_names.items()
              if os.path.dirname(path) == "log"}
    first_files = set(seq_of)
    reused = set()
    assert any(op.kind == "write" and op.inode in first_files
               for op in ops), "the start did not go on in the log file " \
        "it found"
    for i, op in enumerate(ops):
        if op.kind == "link" and op.dir == "log":
            seq_of[op.inode] = int(op.name, 16)
        elif op.kind == "rename" and op.ddir == "log":
            seq_of[op.inode] = int(op.dname, 16)
            reused.add(op.inode)
        elif op.kind == "unlink" and op.dir == "queue":
            removed_at.setdefault(op.name, i)
        elif op.kind == "rename" and op.sdir == "queue":
            removed_at.setdefault(op.sname, i)
        elif op.kind == "write" and op.inode in seq_of:
            for qid in tombstones(op.data, seq_of[op.inode]):
                removed_at.setdefault(qid, i)
                logged.add(qid)
    # The run must have reused a log file: records written into one after
    # it was renamed, its old records after them.
    written_reused = {op.inode for op in ops[min(
        (i for i, o in enumerate(ops) if o.kind == "rename"
         and o.ddir == "log"), default=len(ops)):]
        if op.kind == "write" and op.inode in reused}
    assert written_reused, "no log file was reused in the run"
    made = durable_sets(ops)

    results = {}
    states = 0
    failures = []
    lost = set()
    where = str(tmp_path / "state")
    for cut, what, included, torn in crash_states(ops):
        states += 1
        tree, dirs = apply(tracer, ops, included, torn)
        key = hashlib.sha256(repr(sorted(
            (p, hashlib.sha256(c).digest()) for p, c in tree.items())
        ).encode()).digest()
        if key not in results:
            materialize(tree, dirs, where)
            results[key] = verdict(load(binary, where), accepted)
        loaded, corrupted, errors = results[key]
        failures += [f"cut {cut} ({what}): {c}" for c in corrupted]
        for qid, at in queued_at.items():
            if at < cut and removed_at.get(qid, len(ops)) >= cut \
                    and qid not in loaded:
                lost.add(qid)
                failures.append(f"cut {cut} ({what}): {qid}, answered 250 "
                                f"at op {at}, missing; reader: {errors}")
            # A removal made durable stays done: the message never
            # comes back to be delivered again.
            gone = removed_at.get(qid)
            if gone is not None and made[gone] < cut and qid in loaded:
                failures.append(f"cut {cut} ({what}): {qid}, removed at "
                                f"op {gone} (durable at op {made[gone]}), "
                                f"loaded again")
        if len(failures) > 20:
            break
    syncs = sum(op.kind in ("fsync", "dirsync", "syncfs") for op in ops)
    figures(messages=len(accepted), in_log=len(logged),
            log_files_reused=len(written_reused),
            operations=len(ops), syncs=syncs,
            crash_states=states, distinct_states=len(results),
            lost=len(lost),
            corrupted=sum("corrupted" in f for f in failures),
            seconds=round(time.monotonic() - started, 1))
    assert not failures, "\n".join(failures[:20])
