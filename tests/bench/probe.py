#!/usr/bin/python3
"""Measurements for tests/bench/bench.sh that the shell does badly.

  cpu PID             CPU seconds (user + system) of PID and every process
                      below it, with the children they already reaped
  pss-peak PID STOP   samples the summed PSS (smaps_rollup) of PID's tree
                      every 0.25 s until the file STOP exists (at most one
                      hour); prints the peak in MiB
  rss PID             VmRSS and VmHWM of PID in KiB
  latency TARGET SINK N SIZE
                      N messages of SIZE bytes, one at a time, through
                      TARGET (127.0.0.1:PORT or unix:PATH); each is timed
                      from the connect until the smtp-sink counter in the
                      file SINK shows it; prints the median in ms
  disk DIR N          the disk's limits for N 4 KB commits in DIR: one file
                      + fsync + directory fsync each, from one thread; an
                      append-only log with one fdatasync per commit; the
                      same with one fdatasync per 8 commits; a log written
                      into a preallocated file (fallocate: unwritten
                      extents, as a fresh log file of the daemon's) and
                      into blocks already written and synced (a reused
                      one's), one fdatasync per commit; prints commits/s
  cold-read FILE      drops FILE from the page cache, times reading it;
                      prints MB/s
  tls-front CERT KEY PORT READY
                      an implicit TLS (port 465 style) front for the
                      clear-text server on 127.0.0.1:PORT (smtp-sink has no
                      TLS): listens on a free loopback port, writes it to
                      the file READY, and for each connection makes the
                      TLS handshake with CERT and KEY and then copies bytes
                      both ways to a connection of its own to PORT; runs
                      until killed
"""
import os
import re
import smtplib
import socket
import statistics
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """PID and its descendants, from /proc/PID/task/*/children (cheaper
    than reading every process's stat)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return out


def cpu(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # utime stime cutime cstime: fields 14-17 of proc(5)
        total += sum(int(x) for x in fields[11:15])
    return total / TICK


def pss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def pss_peak(pid, stop):
    peak = 0
    deadline = time.monotonic() + 3600
    while not os.path.exists(stop) and time.monotonic() < deadline:
        peak = max(peak, pss_kib(pid))
        time.sleep(0.25)
    peak = max(peak, pss_kib(pid))
    print("%.1f" % (peak / 1024))


def rss(pid):
    vals = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                vals[key] = line.split()[1]
    print(vals["VmRSS"], vals["VmHWM"])


def sink_count(path):
    with open(path, "rb") as f:
        data = f.read()
    found = re.findall(rb"mesg=(\d+)", data[-200:])
    return int(found[-1]) if found else 0


class UnixSMTP(smtplib.SMTP):
    """SMTP over a Unix stream socket (smarthostd listens on one)."""

    def _get_socket(self, host, port, timeout):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(host)
        return sock


def latency(target, sink, n, size):
    body = ("Subject: latency probe\r\n\r\n" +
            ("x" * 74 + "\r\n") * (size // 76)).encode()
    samples = []
    for _ in range(n):
        before = sink_count(sink)
        t0 = time.monotonic()
        if target.startswith("unix:"):
            smtp = UnixSMTP(target[5:], timeout=30)
        else:
            host, port = target.rsplit(":", 1)
            smtp = smtplib.SMTP(host, int(port), timeout=30)
        smtp.sendmail("from@example.org", ["to@example.net"], body)
        smtp.quit()
        deadline = t0 + 30
        while sink_count(sink) <= before:
            if time.monotonic() > deadline:
                sys.exit("latency: the sink never got the message")
            time.sleep(0.0002)
        samples.append(time.monotonic() - t0)
        time.sleep(0.02)
    print("%.1f" % (statistics.median(samples) * 1000))


def timed(n, fn):
    """Runs fn(i) for i < n, at most 5 s; returns calls per second."""
    t0 = time.monotonic()
    i = 0
    while i < n and time.monotonic() - t0 < 5:
        fn(i)
        i += 1
    return i / (time.monotonic() - t0)


def disk(top, n):
    block = os.urandom(4096)
    qdir = os.path.join(top, "probe-files")
    os.mkdir(qdir)
    dfd = os.open(qdir, os.O_RDONLY | os.O_DIRECTORY)

    def one_file(i):
        fd = os.open(os.path.join(qdir, str(i)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
        os.fsync(dfd)

    files = timed(n, one_file)
    os.close(dfd)
    logs = []
    for batch in (1, 8):
        path = os.path.join(top, "probe-log-%d" % batch)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        pdfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.fsync(pdfd)
        os.close(pdfd)

        def commit(i, fd=fd, batch=batch):
            for _ in range(batch):
                os.write(fd, block)
            os.fdatasync(fd)

        logs.append(timed(max(1, n // batch), commit) * batch)
        os.close(fd)
    for written in (False, True):
        logs.append(in_place(top, block, n, written))
    print("%.0f %.0f %.0f %.0f %.0f" % (files, logs[0], logs[1], logs[2],
                                        logs[3]))


def in_place(top, block, n, written):
    """Commits/s of a log whose records go with pwrite into a file of its
    final size, one fdatasync each: preallocated with fallocate (its
    extents unwritten, so each sync also commits their conversion in the
    file system's journal), or with every block written and synced before
    (a sync then writes the data and flushes the disk's cache)."""
    path = os.path.join(top, "probe-inplace-%d" % written)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    size = n * len(block)
    os.posix_fallocate(fd, 0, size)
    if written:
        zeros = bytes(1 << 20)
        for off in range(0, size, len(zeros)):
            os.pwrite(fd, zeros[:size - off], off)
    os.fsync(fd)
    pdfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(pdfd)
    os.close(pdfd)

    def commit(i):
        os.pwrite(fd, block, i * len(block))
        os.fdatasync(fd)

    rate = timed(n, commit)
    os.close(fd)
    os.unlink(path)
    return rate


def cold_read(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    size = os.fstat(fd).st_size
    t0 = time.monotonic()
    while os.read(fd, 1 << 20):
        pass
    t = time.monotonic() - t0
    os.close(fd)
    print("%.0f" % (size / 1e6 / t))


def tls_front(cert, key, port, ready):
    import asyncio
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def pipe(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1",
                                                             port)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))

    async def run():
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
        with open(ready + ".tmp", "w") as f:
            f.write("%d\n" % server.sockets[0].getsockname()[1])
        os.rename(ready + ".tmp", ready)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def main(argv):
    cmd = argv[1]
    if cmd == "cpu":
        print("%.3f" % cpu(int(argv[2])))
    elif cmd == "pss-peak":
        pss_peak(int(argv[2]), argv[3])
    elif cmd == "rss":
        rss(int(argv[2]))
    elif cmd == "latency":
        latency(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif cmd == "disk":
        disk(argv[2], int(argv[3]))
    elif cmd == "cold-read":
        cold_read(argv[2])
    elif cmd == "tls-front":
        tls_front(argv[2], argv[3], int(argv[4]), argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
