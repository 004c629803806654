#!/usr/bin/python3
"""Backlog benchmark: a large queue built while the upstream is down, a
restart on the same spool, then the upstream comes back.

  1. smarthostd relays to a port where nothing listens (upstream down),
     retry_min = retry_max = 3600, so nothing is retried by itself;
  2. smtp-source (Postfix), or with --client python this script itself,
     submits N messages of --size bytes from --clients clients, each with
     a unique Message-Id; every one answered 250 is in the spool;
     with --prefill the script instead writes N queue files itself, in
     the spool format, each after one failed attempt with its next try an
     hour away (for sizes where submitting through SMTP takes too long);
  3. smarthostd is stopped (SIGTERM) and started again on the same spool,
     and reads every message it found there (upstream still down); with
     --cold it is then stopped once more, the spool's files are dropped
     from the page cache (fsync, then posix_fadvise DONTNEED, as after a
     reboot) and it is started again, both restarts timed;
  4. an aiosmtpd upstream starts on the relay port and the queue is flushed
     (SIGUSR1);
  5. the run ends when queue/ is empty.

Prints: restart time (exec to "started"), the time until every message
found at start was read and the RSS then, the spool log's files and the
disk they hold after the restart, peak descriptors (from /proc/PID/fd,
sampled), peak RSS (VmHWM), drain rate (messages over the time from the
flush to an empty queue) and the daemon's CPU time and disk writes
meanwhile (less at the mercy of other load than the rate), the messages
the spool log copied forward
during the drain (the daemon's last log line about it) and what the
upstream saw: messages, unique Message-Ids, duplicates. Exactly once
means unique == N and duplicates == 0.

The drain is watched at no cost to the daemon that grows with the
backlog: the upstream's record of deliveries is read as it grows, and only
once it holds N messages is the daemon asked (its control socket's
metrics) whether its queue is empty; the spool itself is read once, after
the daemon stopped, to check that it is empty. (Reading every log file
each time, in Python, took a core for a minute per look with 100,000
queued, and made the end of a large drain late by as much.)

With --check the script exits 1 unless every message arrived exactly once
and the daemon's descriptors stayed below --max-fds; timing is printed,
never asserted. Usage:

  backlog.py --smarthostd build/src/smarthostd -n 100000 [--keep]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from spoolread import live_ids

SMTP_SOURCE = "/usr/sbin/smtp-source"
PYTHON = "/usr/bin/python3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(msg):
    print(f"backlog: {msg}", file=sys.stderr)
    sys.exit(1)


# ---- the upstream (run as a child process: its own core) ----

def upstream_main(port, out_path):
    """An aiosmtpd server that appends each message's Message-Id (or, if
    it has none, a digest of its body) to out_path, one line each."""
    from aiosmtpd.controller import Controller

    mid_re = re.compile(rb"^message-id:[ \t]*(.*?)\r?$",
                        re.IGNORECASE | re.MULTILINE)
    out = open(out_path, "a", buffering=1)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            data = envelope.original_content or envelope.content
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogateescape")
            head = data.split(b"\r\n\r\n", 1)[0]
            m = mid_re.search(head)
            key = m.group(1).decode("ascii", "replace") if m else \
                "nomid-%d" % hash(data)
            for _ in envelope.rcpt_tos:
                out.write(key + "\n")
            return "250 OK"

    ctl = Controller(Handler(), hostname="127.0.0.1", port=port,
                     decode_data=False, data_size_limit=0)
    ctl.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    ctl.stop()
    out.close()


# ---- measuring the daemon ----

class Sampler(threading.Thread):
    """Peak descriptors and RSS of one process, sampled every 20 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_fds = 0
        self.peak_rss_kib = 0
        self.stopped = threading.Event()

    def sample(self):
        try:
            n = len(os.listdir(f"/proc/{self.pid}/fd"))
            self.peak_fds = max(self.peak_fds, n)
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        self.peak_rss_kib = max(self.peak_rss_kib,
                                                int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass

    def run(self):
        while not self.stopped.wait(0.02):
            self.sample()

    def stop(self):
        self.sample()
        self.stopped.set()
        self.join()


class Daemon:
    def __init__(self, binary, work, relay_port, nofile):
        self.binary = binary
        self.work = work
        self.spool = os.path.join(work, "spool")
        self.conf = os.path.join(work, "smarthostd.conf")
        self.log = os.path.join(work, "daemon.log")
        self.nofile = nofile
        self.proc = None
        self.port = None
        with open(self.conf, "w") as f:
            f.write(f"""hostname = "backlog.test";
spool = "{self.spool}";
state_dir = "{os.path.join(work, 'state')}";
control_socket = "{os.path.join(work, 'control.sock')}";
shutdown_timeout = 10;
listen = ( {{ address = "127.0.0.1"; port = "0"; }} );
limits = {{ max_sessions = 200; }};
queue = {{ retry_min = 3600; retry_max = 3600; }};
relays = {{
  up = {{ type = "smtp"; host = "127.0.0.1"; port = "{relay_port}";
          tls = "none"; max_connections = 10; }};
}};
""")

    def start(self, timeout=600):
        """Starts the daemon; returns the seconds until it logged
        'started' (it accepts mail from then on)."""
        logf = open(self.log, "a")
        mark = os.path.getsize(self.log)

        def limits():
            if self.nofile:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE,
                                   (self.nofile, self.nofile))

        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.binary, "-c", self.conf],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     preexec_fn=limits)
        logf.close()
        deadline = t0 + timeout
        while True:
            with open(self.log, "rb") as f:
                f.seek(mark)
                text = f.read().decode("utf-8", "replace")
            if "started, pid=" in text:
                break
            if self.proc.poll() is not None:
                fail(f"smarthostd exited during start-up:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                fail("smarthostd did not start")
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if not m:
            fail("no 'listening on' line in the daemon's log")
        self.port = int(m.group(1))
        return elapsed

    def stop(self, timeout=120):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("smarthostd did not stop within %d s" % timeout)
        self.proc = None
        if rc != 0:
            fail(f"smarthostd exited with status {rc}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def queued(self, check_payload=True):
        """Messages in the spool: files in queue/ and the log's (with
        check_payload=False, the log's records are taken on their
        headers' checksums alone, which are a hundredth of the bytes)."""
        try:
            files = len(os.listdir(os.path.join(self.spool, "queue")))
        except FileNotFoundError:
            files = 0
        return files + len(live_ids(self.spool, check_payload))

    def queue_gauge(self):
        """The daemon's own count of queued messages (its metrics)."""
        status, lines = control(os.path.join(self.work, "control.sock"),
                                "metrics")
        for line in lines:
            if line.startswith("smarthostd_queue_messages "):
                return int(line.split()[1])
        fail(f"no queue gauge in the metrics ({status})")

    def log_count(self, pattern):
        try:
            with open(self.log, "rb") as f:
                return f.read().count(pattern.encode())
        except FileNotFoundError:
            return 0    # not started yet (--prefill)

    def copied_forward(self):
        """Messages the spool log copied forward in the daemon's last
        run (its line at shutdown), or None."""
        with open(self.log, "rb") as f:
            found = re.findall(rb"spool log: (\d+) messages copied forward",
                               f.read())
        return int(found[-1]) if found else None

    def log_files(self):
        """The spool log's files and the bytes of disk they hold."""
        d = os.path.join(self.spool, "log")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return 0, 0
        blocks = 0
        for name in names:
            try:
                blocks += os.stat(os.path.join(d, name)).st_blocks
            except FileNotFoundError:
                pass
        return len(names), blocks * 512

    def drop_cache(self):
        """Drops the spool's files from the page cache, as a reboot
        would: written back first (DONTNEED drops clean pages only)."""
        for top, dirs, files in os.walk(self.spool):
            for name in files + dirs:
                try:
                    fd = os.open(os.path.join(top, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def usage(pid):
    """(CPU seconds, bytes written to the disk) of a process so far,
    all its threads: /proc/PID/stat's utime + stime, /proc/PID/io's
    write_bytes."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    written = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                written = int(line.split()[1])
    return cpu, written


def submit_python(port, n, clients, size):
    """smtplib from `clients` threads, one connection each, n messages in
    all, each with a unique Message-Id."""
    import smtplib
    body = ("X" * 78 + "\r\n") * max(1, size // 80)
    errors = []

    def run(first, count):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
                for i in range(first, first + count):
                    msg = (f"From: <from@example.org>\r\n"
                           f"To: <to@example.net>\r\n"
                           f"Message-Id: <backlog.{i}@example.org>\r\n"
                           f"Subject: {i}\r\n\r\n{body}")
                    c.sendmail("from@example.org", ["to@example.net"],
                               msg.encode())
        except (OSError, smtplib.SMTPException) as e:
            errors.append(repr(e))

    t0 = time.monotonic()
    threads = []
    per, extra = divmod(n, clients)
    first = 0
    for k in range(clients):
        count = per + (1 if k < extra else 0)
        threads.append(threading.Thread(target=run, args=(first, count)))
        first += count
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("submission failed: " + "; ".join(errors[:3]))
    return time.monotonic() - t0


# ---- a listing and a probe client (--probe-listing) ----

class ControlReader:
    """Reads one response of the daemon's control socket line by line."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("control connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8")

    def rest(self):
        """The data lines up to the final ".", unstuffed."""
        lines = []
        while True:
            line = self.line()
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith("..") else line)


def control_connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(120)
    sock.connect(path)
    return sock


def control(path, request):
    """(status line, data lines) of one control request."""
    with control_connect(path) as sock:
        sock.sendall(request.encode() + b"\n")
        r = ControlReader(sock)
        status = r.line()
        return status, r.rest()


def probe_round_trips(port, stop, out):
    """MAIL..250 (then RSET) round trips on one SMTP connection until
    stop is set; each MAIL's round trip in seconds is appended to out."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as c:
        f = c.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError("probe: connection closed")
                if line[3:4] != b"-":
                    return int(line[:3])

        assert reply() == 220
        c.sendall(b"EHLO probe.test\r\n")
        assert reply() == 250
        while not stop.is_set():
            t0 = time.monotonic()
            c.sendall(b"MAIL FROM:<probe@example.org>\r\n")
            code = reply()
            out.append(time.monotonic() - t0)
            assert code == 250, code
            c.sendall(b"RSET\r\n")
            assert reply() == 250


def quantile_ms(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def probe_listing(daemon, control_path):
    """The probe's MAIL round trip for a second with the daemon idle, then
    while a whole listing is read as fast as it comes; prints both."""
    idle, busy = [], []
    stop = threading.Event()
    t = threading.Thread(target=probe_round_trips,
                         args=(daemon.port, stop, idle))
    t.start()
    time.sleep(1)
    stop.set()
    t.join()
    stop = threading.Event()
    t = threading.Thread(target=probe_round_trips,
                         args=(daemon.port, stop, busy))
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    status, lines = control(control_path, "queue")
    took = time.monotonic() - t0
    stop.set()
    t.join()
    listed = sum(1 for line in lines if not line.startswith(" "))
    print(f"listing           {listed} messages in {took:.1f} s ({status})")
    print(f"probe MAIL..250   idle: median {quantile_ms(idle, 0.5):.2f} ms,"
          f" max {quantile_ms(idle, 1):.2f} ms; during the listing: "
          f"median {quantile_ms(busy, 0.5):.2f} ms, p99 "
          f"{quantile_ms(busy, 0.99):.2f} ms, max "
          f"{quantile_ms(busy, 1):.2f} ms, {len(busy)} round trips",
          flush=True)


ID_EPOCH_MS = 1577836800000


def prefill(spool, n, size):
    """Writes n queue files as smarthostd leaves them after one failed
    attempt with the upstream down: preamble, envelope (version 1, next
    try an hour away), body with a unique Message-Id."""
    queue = os.path.join(spool, "queue")
    os.makedirs(queue, exist_ok=True)
    now = int(time.time())
    base_ms = int(time.time() * 1000) - ID_EPOCH_MS - 3600 * 1000
    filler = b"X" * 78 + b"\r\n"
    t0 = time.monotonic()
    for i in range(n):
        qid = "%016X" % (((base_ms + i // 4096) << 22) | (1023 << 12) |
                         (i % 4096))
        env = (f"smarthostd-envelope 1\nid {qid}\n"
               f"sender from@example.org\nclient localhost[127.0.0.1]\n"
               f"flags 0\ncreated {now - 60}\nnext-try {now + 3600}\n"
               f"attempts 1\nrcpt to@example.net pending - -\n\n").encode()
        head = (f"From: <from@example.org>\r\nTo: <to@example.net>\r\n"
                f"Message-Id: <prefill.{i}@example.org>\r\n\r\n").encode()
        body = head + filler * max(1, (size - len(head)) // 80)
        pre = b"smarthostd-spool 1 %016x %016x" % (64 + len(env), len(body))
        pre = pre.ljust(63) + b"\n"
        fd = os.open(os.path.join(queue, qid),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, pre + env + body)
        os.close(fd)
    return time.monotonic() - t0


class Deliveries:
    """The upstream's record of deliveries (one line each), counted as it
    grows: each look reads only what was appended since the last."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.count = 0
        self.times = []        # (monotonic time, count) at each look

    def look(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        # Whole lines only: the upstream may be writing one.
        data = data[:data.rfind(b"\n") + 1]
        self.pos += len(data)
        self.count += data.count(b"\n")
        self.times.append((time.monotonic(), self.count))
        return self.count

    def time_of(self, k):
        """When the k-th delivery had been seen (at the first look that
        saw it), or None."""
        for t, c in self.times:
            if c >= k:
                return t
        return None


def submit(port, n, clients, size):
    """smtp-source: n messages, one per connection (its default)."""
    t0 = time.monotonic()
    r = subprocess.run([SMTP_SOURCE, "-s", str(clients), "-m", str(n),
                        "-l", str(size), "-f", "from@example.org",
                        "-t", "to@example.net", f"127.0.0.1:{port}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=max(3600, n // 50))
    if r.returncode != 0:
        fail("smtp-source failed: " + r.stdout.decode(errors="replace"))
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smarthostd", default=os.environ.get("SMARTHOSTD"))
    ap.add_argument("-n", "--messages", type=int, default=100000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--client", choices=("smtp-source", "python"),
                    default="smtp-source",
                    help="load generator (python: smtplib, no Postfix)")
    ap.add_argument("--nofile", type=int, default=0,
                    help="RLIMIT_NOFILE (soft and hard) for the daemon")
    ap.add_argument("--drain-timeout", type=float, default=3600)
    ap.add_argument("--prefill", action="store_true",
                    help="write the queue files directly (no first run)")
    ap.add_argument("--cold", action="store_true",
                    help="restart once more with the spool dropped from "
                    "the page cache, and time both restarts")
    ap.add_argument("--no-drain", action="store_true",
                    help="stop after the restart and the reading")
    ap.add_argument("--probe-listing", action="store_true",
                    help="after the reading, time a probe client's MAIL "
                    "round trips while the whole queue is listed")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless exactly once and fds < --max-fds")
    ap.add_argument("--max-fds", type=int, default=300)
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory")
    ap.add_argument("--upstream", nargs=2, metavar=("PORT", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream:
        upstream_main(int(args.upstream[0]), args.upstream[1])
        return
    if not args.smarthostd or not os.access(args.smarthostd, os.X_OK):
        fail("--smarthostd (or SMARTHOSTD) must name the daemon")
    if (args.client == "smtp-source" and not args.prefill and
            not os.access(SMTP_SOURCE, os.X_OK)):
        fail(f"{SMTP_SOURCE} is missing: apt-get install postfix, "
             "or use --client python")

    work = tempfile.mkdtemp(prefix="shd-backlog.",
                            dir=os.environ.get("TMPDIR"))
    relay_port = free_port()
    daemon = Daemon(args.smarthostd, work, relay_port, args.nofile)
    upstream = None
    received = os.path.join(work, "received")
    n = args.messages
    ok = True
    try:
        if args.prefill:
            t_submit = prefill(daemon.spool, n, args.size)
            how = "written directly"
        else:
            daemon.start()
            t_submit = (submit_python if args.client == "python" else
                        submit)(daemon.port, n, args.clients, args.size)
            how = "submitted"
        queued = daemon.queued(check_payload=False)
        print(f"queued {queued} of {n} messages ({how}) in {t_submit:.1f} s "
              f"({n / t_submit:.0f} msgs/s), upstream down", flush=True)
        if queued != n:
            fail(f"{queued} messages in the spool after submitting {n}")
        if not args.prefill:
            daemon.stop()

        read_line = "every message found at start has been read"
        reads_before = daemon.log_count(read_line)
        restart = daemon.start()
        if args.cold:
            # The warm restart's time, then a start as after a reboot.
            warm = restart
            daemon.stop()
            daemon.drop_cache()
            reads_before = daemon.log_count(read_line)
            restart = daemon.start()
            print(f"restart warm      {warm:.2f} s; cold (spool dropped "
                  f"from the page cache) {restart:.2f} s", flush=True)
        t_start = time.monotonic()
        sampler = Sampler(daemon.proc.pid)
        sampler.start()
        # Let the daemon read its backlog while the upstream is still
        # down: the moment the descriptors piled up.
        t_read = None
        while time.monotonic() - t_start < args.drain_timeout:
            if daemon.log_count(read_line) > reads_before:
                t_read = time.monotonic() - t_start
                break
            if daemon.proc.poll() is not None:
                fail("smarthostd died while reading its queue")
            time.sleep(0.1)
        time.sleep(1)
        sampler.sample()
        rss_read = sampler.peak_rss_kib
        fds_idle = sampler.peak_fds
        print(f"restart           {restart:.2f} s (exec to accepting mail)")
        nlog, logbytes = daemon.log_files()
        print(f"log files         {nlog}, {logbytes / 1048576:.1f} MiB of "
              f"disk after the restart")
        print("read all          " + (f"{t_read:.1f} s after start"
              if t_read is not None else "not within the timeout") +
              f", peak RSS by then {rss_read / 1024:.1f} MiB, peak "
              f"descriptors {fds_idle}", flush=True)
        if args.probe_listing:
            probe_listing(daemon, os.path.join(work, "control.sock"))
        if args.no_drain:
            sampler.stop()
            daemon.stop()
            return

        upstream = subprocess.Popen([PYTHON, os.path.abspath(__file__),
                                     "--upstream", str(relay_port),
                                     received], stdout=subprocess.PIPE)
        if upstream.stdout.readline().strip() != b"ready":
            fail("the upstream did not start")
        deliveries = Deliveries(received)
        cpu0, written0 = usage(daemon.proc.pid)
        t_flush = time.monotonic()
        daemon.proc.send_signal(signal.SIGUSR1)
        deadline = t_flush + args.drain_timeout
        while True:
            if daemon.proc.poll() is not None:
                fail("smarthostd died while draining")
            if deliveries.look() >= n and daemon.queue_gauge() == 0:
                break
            if time.monotonic() > deadline:
                print(f"backlog: {daemon.queue_gauge()} still queued "
                      f"after {args.drain_timeout:.0f} s", file=sys.stderr)
                ok = False
                break
            time.sleep(0.05)
        t_drain = time.monotonic() - t_flush
        cpu1, written1 = usage(daemon.proc.pid)
        sampler.stop()
        daemon.stop()
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(30)
        upstream = None
        left = daemon.queued()
        if left != 0:
            print(f"backlog: {left} messages left in the spool",
                  file=sys.stderr)
            ok = False

        ids = {}
        with open(received) as f:
            for line in f:
                ids[line] = ids.get(line, 0) + 1
        total = sum(ids.values())
        dups = total - len(ids)
        errors = daemon.log_count("cannot record delivery state")
        print(f"messages          {n} x {args.size} bytes, "
              f"{args.clients} clients")
        print(f"peak descriptors  {sampler.peak_fds} "
              f"(before the flush: {fds_idle})")
        print(f"peak RSS          {sampler.peak_rss_kib / 1024:.1f} MiB")
        print(f"drain             {t_drain:.1f} s, "
              f"{n / t_drain:.0f} msgs/s")
        # Less at the mercy of other load on the machine than the rate.
        print(f"drain cost        {1000 * (cpu1 - cpu0) / n:.3f} ms of CPU "
              f"a message, {(written1 - written0) / 1048576:.1f} MiB "
              f"written by the daemon")
        t_first = deliveries.time_of(1)
        if t_first is not None and t_flush + t_drain > t_first:
            # Without the fixed cost of starting: reading the first
            # envelopes, connecting, the first transaction.
            first = t_first - t_flush
            print(f"first delivery    {first:.2f} s after the flush; from "
                  f"then on {(n - 1) / (t_drain - first):.0f} msgs/s")
        # The same stretch of every drain, whatever its size: a rate that
        # fell with the backlog would show here against the whole.
        k = min(n, 1000)
        t_k = deliveries.time_of(k)
        if t_first is not None and t_k is not None and t_k > t_first:
            print(f"first {k} delivered {t_k - t_flush:.2f} s after the "
                  f"flush, {(k - 1) / (t_k - t_first):.0f} msgs/s after the "
                  f"first")
        t_n = deliveries.time_of(n)
        if t_n is not None:
            print(f"last delivery     {t_n - t_flush:.1f} s after the flush; "
                  f"queue empty {t_drain:.1f} s")
        copied = daemon.copied_forward()
        print("copied forward    " + ("(not logged)" if copied is None else
              f"{copied} messages during the drain"))
        print(f"upstream got      {total} messages, {len(ids)} unique, "
              f"{dups} duplicates")
        print(f"state write errors {errors}")
        if len(ids) != n or dups != 0:
            print("backlog: not exactly once", file=sys.stderr)
            ok = False
        if args.check and sampler.peak_fds >= args.max_fds:
            print(f"backlog: {sampler.peak_fds} descriptors, bound "
                  f"{args.max_fds}", file=sys.stderr)
            ok = False
    finally:
        daemon.kill()
        if upstream is not None:
            upstream.kill()
            upstream.wait()
        if args.keep or not ok:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
