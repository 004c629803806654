"""A model of what a power cut can leave on disk, built from an strace of
the daemon (ALICE/CrashMonkey style): parse the trace into file-system
operations on inodes, then construct the crash states the order of
fsync/fdatasync/syncfs and directory fsyncs allows.

The persistence model (what a file system that journals metadata and
data in any order may do, and no more):
- An operation on a file's data (write, pwrite, truncate) is durable once
  an fsync or fdatasync of that file, or a syncfs, completed after it.
- A directory operation (create, link, unlink, rename, mkdir) is durable
  once an fsync of a directory it changes, or a syncfs, completed after
  it. A rename is atomic: it persists whole or not at all.
- Anything not yet durable may or may not be on disk at the cut, in any
  order; a write not yet durable may be on disk in part (torn).

crash_states() enumerates, for every cut point (after each operation):
the whole prefix persisted; only what is durable persisted; the prefix
without any one non-durable operation (a reordering); and the prefix with
the last non-durable write torn in half or extended with zeros (an append
whose size reached the disk before its data).
"""

import os
import re

STR = r'"((?:\\x[0-9a-f]{2})*)"'
FD = r'(-?\d+|AT_FDCWD)<((?:\\x[0-9a-f]{2})*)>'
LINE_RE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(?:<((?:\\x[0-9a-f]{2})*)>)?")
UNFINISHED_RE = re.compile(r"^(\d+)\s+(.*) <unfinished \.\.\.>$")
RESUMED_RE = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
QUEUED_RE = re.compile(rb"250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")


def unhex(text):
    return bytes.fromhex(text.replace("\\x", ""))


def strings(args):
    return [unhex(s) for s in re.findall(STR, args)]


def fds(args):
    return [(fd, unhex(path).decode("utf-8", "replace"))
            for fd, path in re.findall(FD, args)]


def join_lines(lines):
    """Merges strace's <unfinished ...> and <... resumed> halves; each
    call comes at the place it completed, except close, which comes where
    it started: its descriptor may be reused by another thread's open (or
    an untraced accept) that strace reports first, although the kernel
    freed the number before handing it out again."""
    pending = {}
    for line in lines:
        line = line.rstrip("\n")
        m = UNFINISHED_RE.match(line)
        if m:
            head = m.group(2)
            if head.startswith("close("):
                pending[m.group(1)] = None
                yield f"{m.group(1)} {head}) = 0"
            else:
                pending[m.group(1)] = head
            continue
        m = RESUMED_RE.match(line)
        if m:
            head = pending.pop(m.group(1), None)
            if head is None:
                continue
            yield f"{m.group(1)} {head}{m.group(3)}"
            continue
        yield line


class Op:
    """One resolved operation. kind: write (inode, off, data), trunc
    (inode, size), link (dir, name, inode), unlink (dir, name), rename
    (sdir, sname, ddir, dname, inode), mkdir (dir, name), fsync (inode),
    dirsync (dir), syncfs, queued (qid: a 250 written to a client)."""

    def __init__(self, kind, **kw):
        self.kind = kind
        self.__dict__.update(kw)

    def dirs(self):
        if self.kind in ("link", "unlink", "mkdir"):
            return {self.dir}
        if self.kind == "rename":
            return {self.sdir, self.ddir}
        return set()

    def __repr__(self):
        fields = {k: (v if not isinstance(v, bytes) else f"{len(v)} bytes")
                  for k, v in self.__dict__.items() if k != "kind"}
        return f"{self.kind}{fields}"


class Tracer:
    """Resolves a trace of one process into Ops on the spool under root
    (a path), starting from the tree in initial (path -> bytes, with the
    spool's directories in initial_dirs)."""

    def __init__(self, root, initial, initial_dirs):
        self.root = root.rstrip("/")
        self.names = {}          # path relative to root -> inode
        self.data = {}           # inode -> bytearray (the real run)
        self.dirs = set(initial_dirs)
        self.initial_dirs = set(initial_dirs)
        self.next_inode = 1
        for path, content in initial.items():
            ino = self._new_inode()
            self.names[path] = ino
            self.data[ino] = bytearray(content)
        self.initial_names = dict(self.names)
        self.initial_data = {i: bytes(d) for i, d in self.data.items()}
        self.fdmap = {}          # fd -> ("file", inode, append) | ("dir", rel)
        self.offsets = {}        # fd -> file offset
        self.ops = []
        self.unknown = set()     # syscalls seen on the spool, not modelled

    def _new_inode(self):
        self.next_inode += 1
        return self.next_inode - 1

    def rel(self, path):
        path = os.path.normpath(path)
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def _path(self, dirpath, name):
        name = name.decode("utf-8", "replace")
        if name.startswith("/"):
            return self.rel(name)
        return self.rel(os.path.join(dirpath, name))

    def feed(self, lines):
        for line in join_lines(lines):
            m = LINE_RE.match(line)
            if not m:
                continue
            call, args, ret = m.group(2), m.group(3), int(m.group(4))
            if ret < 0:
                continue
            handler = getattr(self, "sys_" + call, None)
            if handler is not None:
                handler(args, ret, m.group(5))

    # -- descriptors
    def sys_openat(self, args, ret, retpath):
        (dfd, dpath), = fds(args)[:1]
        name = strings(args)[0]
        self._open(self._path(dpath, name), args, ret)

    def sys_open(self, args, ret, retpath):
        self._open(self.rel(strings(args)[0].decode("utf-8", "replace")),
                   args, ret)

    def _open(self, rel, args, fd):
        self.fdmap.pop(fd, None)
        if rel is None:
            return
        if rel in self.dirs or "O_DIRECTORY" in args:
            self.fdmap[fd] = ("dir", rel)
            return
        ino = self.names.get(rel)
        if ino is None:
            assert "O_CREAT" in args, f"open of unknown {rel}: {args}"
            ino = self._new_inode()
            self.data[ino] = bytearray()
            self.names[rel] = ino
            d, n = os.path.split(rel)
            self.ops.append(Op("link", dir=d, name=n, inode=ino))
        elif "O_TRUNC" in args and self.data[ino]:
            self._trunc(ino, 0)
        self.fdmap[fd] = ("file", ino, "O_APPEND" in args)
        self.offsets[fd] = 0

    def sys_creat(self, args, ret, retpath):
        self._open(self.rel(strings(args)[0].decode("utf-8", "replace")),
                   "O_CREAT|O_TRUNC", ret)

    def sys_close(self, args, ret, retpath):
        fd = int(args.split("<")[0])
        self.fdmap.pop(fd, None)

    def _dup(self, old, new):
        if old in self.fdmap:
            self.fdmap[new] = self.fdmap[old]
            self.offsets[new] = self.offsets.get(old, 0)
        else:
            self.fdmap.pop(new, None)

    def sys_dup(self, args, ret, retpath):
        self._dup(int(args.split("<")[0]), ret)

    def sys_dup2(self, args, ret, retpath):
        self._dup(int(args.split("<")[0]), ret)

    sys_dup3 = sys_dup2

    def sys_fcntl(self, args, ret, retpath):
        if "F_DUPFD" in args:
            self._dup(int(args.split("<")[0]), ret)

    # -- data
    def _file(self, args):
        fd = int(args.split("<")[0])
        entry = self.fdmap.get(fd)
        if entry is None:
            return fd, None
        return fd, entry

    def _write(self, ino, off, data):
        buf = self.data[ino]
        if len(buf) < off:
            buf.extend(b"\0" * (off - len(buf)))
        buf[off:off + len(data)] = data
        self.ops.append(Op("write", inode=ino, off=off, data=bytes(data)))

    def _trunc(self, ino, size):
        buf = self.data[ino]
        if len(buf) > size:
            del buf[size:]
        else:
            buf.extend(b"\0" * (size - len(buf)))
        self.ops.append(Op("trunc", inode=ino, size=size))

    def _socket_write(self, args):
        annotated = fds(args)
        if not annotated or not annotated[0][1].startswith("socket:"):
            return
        for qid in QUEUED_RE.findall(b"".join(strings(args))):
            self.ops.append(Op("queued", qid=qid.decode()))

    def _sequential_write(self, args, ret, data):
        """write or writev of data at the descriptor's offset. strace's
        annotation of the descriptor (-y) decides what it is: a socket's
        number may still be a closed file's in the model."""
        fd, entry = self._file(args)
        annotated = fds(args)
        if annotated and annotated[0][1].startswith(("socket:", "pipe:")):
            entry = None
        if entry is None:
            self._socket_write(args)
            return
        if entry[0] != "file":
            return
        ino, append = entry[1], entry[2]
        off = len(self.data[ino]) if append else self.offsets[fd]
        self._write(ino, off, data[:ret])
        self.offsets[fd] = off + ret

    def sys_write(self, args, ret, retpath):
        self._sequential_write(args, ret, strings(args)[0])

    def sys_writev(self, args, ret, retpath):
        self._sequential_write(args, ret, b"".join(strings(args)))

    def sys_sendto(self, args, ret, retpath):
        self._socket_write(args)

    sys_sendmsg = sys_sendto

    def sys_pwrite64(self, args, ret, retpath):
        fd, entry = self._file(args)
        if entry is None or entry[0] != "file":
            return
        off = int(args.rsplit(",", 1)[1])
        self._write(entry[1], off, strings(args)[0][:ret])

    def sys_ftruncate(self, args, ret, retpath):
        fd, entry = self._file(args)
        if entry is None or entry[0] != "file":
            return
        self._trunc(entry[1], int(args.rsplit(",", 1)[1]))

    def sys_fallocate(self, args, ret, retpath):
        """Mode 0 (preallocation, the spool log's): the file grows to
        offset + length with zeros if it was shorter, a change of size
        like a truncate (durable by the file's sync). Other modes are
        not modelled."""
        fd, entry = self._file(args)
        if entry is None or entry[0] != "file":
            return
        mode, off, length = [a.strip() for a in args.rsplit(",", 3)[1:]]
        if mode != "0":
            self.unknown.add(f"fallocate mode {mode}")
            return
        end = int(off) + int(length)
        if len(self.data[entry[1]]) < end:
            self._trunc(entry[1], end)

    def sys_lseek(self, args, ret, retpath):
        fd, entry = self._file(args)
        if entry is not None and entry[0] == "file":
            self.offsets[fd] = ret

    # -- syncs
    def sys_fsync(self, args, ret, retpath):
        fd, entry = self._file(args)
        if entry is None:
            return
        if entry[0] == "file":
            self.ops.append(Op("fsync", inode=entry[1]))
        else:
            self.ops.append(Op("dirsync", dir=entry[1]))

    sys_fdatasync = sys_fsync

    def sys_syncfs(self, args, ret, retpath):
        self.ops.append(Op("syncfs"))

    def sys_sync(self, args, ret, retpath):
        self.ops.append(Op("syncfs"))

    # -- names
    def _at(self, args, index):
        """The path relative to root of the index-th (dirfd, name) pair."""
        dirs = fds(args)
        names = strings(args)
        return self._path(dirs[index][1], names[index])

    def sys_renameat2(self, args, ret, retpath):
        src, dst = self._at(args, 0), self._at(args, 1)
        if src is None or dst is None:
            if src is not None or dst is not None:
                self.unknown.add("rename across the spool boundary")
            return
        ino = self.names.pop(src)
        self.names[dst] = ino
        sd, sn = os.path.split(src)
        dd, dn = os.path.split(dst)
        self.ops.append(Op("rename", sdir=sd, sname=sn, ddir=dd, dname=dn,
                           inode=ino))

    sys_renameat = sys_renameat2

    def sys_rename(self, args, ret, retpath):
        a, b = strings(args)[:2]
        src = self.rel(a.decode("utf-8", "replace"))
        dst = self.rel(b.decode("utf-8", "replace"))
        if src is not None and dst is not None:
            ino = self.names.pop(src)
            self.names[dst] = ino
            sd, sn = os.path.split(src)
            dd, dn = os.path.split(dst)
            self.ops.append(Op("rename", sdir=sd, sname=sn, ddir=dd,
                               dname=dn, inode=ino))

    def sys_unlinkat(self, args, ret, retpath):
        rel = self._at(args, 0)
        if rel is None:
            return
        d, n = os.path.split(rel)
        if "AT_REMOVEDIR" in args:
            self.dirs.discard(rel)
            self.unknown.add("rmdir")
            return
        self.names.pop(rel, None)
        self.ops.append(Op("unlink", dir=d, name=n))

    def sys_unlink(self, args, ret, retpath):
        rel = self.rel(strings(args)[0].decode("utf-8", "replace"))
        if rel is None:
            return
        self.names.pop(rel, None)
        d, n = os.path.split(rel)
        self.ops.append(Op("unlink", dir=d, name=n))

    def sys_linkat(self, args, ret, retpath):
        src, dst = self._at(args, 0), self._at(args, 1)
        if dst is None:
            return
        ino = self.names[src]
        self.names[dst] = ino
        d, n = os.path.split(dst)
        self.ops.append(Op("link", dir=d, name=n, inode=ino))

    def sys_mkdirat(self, args, ret, retpath):
        rel = self._at(args, 0)
        if rel is not None:
            self.dirs.add(rel)
            d, n = os.path.split(rel)
            self.ops.append(Op("mkdir", dir=d, name=n))

    def sys_mkdir(self, args, ret, retpath):
        rel = self.rel(strings(args)[0].decode("utf-8", "replace"))
        if rel is not None:
            self.dirs.add(rel)
            d, n = os.path.split(rel)
            self.ops.append(Op("mkdir", dir=d, name=n))

    def final_tree(self):
        """path -> bytes of the real run's end, from the model."""
        return {p: bytes(self.data[i]) for p, i in self.names.items()}


def durable_sets(ops):
    """For each op index i, the index of the first sync that makes it
    durable (len(ops) if none does)."""
    n = len(ops)
    made = [n] * n
    open_data = {}   # inode -> [indices not yet durable]
    open_dirs = {}   # dir -> [indices not yet durable]
    open_all = []
    for i, op in enumerate(ops):
        if op.kind in ("write", "trunc"):
            open_data.setdefault(op.inode, []).append(i)
            open_all.append(i)
        elif op.kind in ("link", "unlink", "rename", "mkdir"):
            for d in op.dirs():
                open_dirs.setdefault(d, []).append(i)
            open_all.append(i)
        elif op.kind == "fsync":
            for j in open_data.pop(op.inode, []):
                made[j] = min(made[j], i)
        elif op.kind == "dirsync":
            for j in open_dirs.pop(op.dir, []):
                made[j] = min(made[j], i)
        elif op.kind == "syncfs":
            for j in open_all:
                made[j] = min(made[j], i)
            open_all = []
            open_data = {}
            open_dirs = {}
    return made


def apply(tracer, ops, included, torn=None):
    """The on-disk tree (path -> bytes, dirs) after applying the ops whose
    index is in included, in order, to the initial state. torn = (index,
    mode) applies that write in part: "half" or "zeros"."""
    names = dict(tracer.initial_names)
    data = {i: bytearray(d) for i, d in tracer.initial_data.items()}
    dirs = set(tracer.initial_dirs)
    for i, op in enumerate(ops):
        if i not in included:
            continue
        k = op.kind
        if k == "write":
            buf = data.setdefault(op.inode, bytearray())
            payload = op.data
            if torn is not None and torn[0] == i:
                payload = (payload[:len(payload) // 2] if torn[1] == "half"
                           else b"\0" * len(payload))
            if len(buf) < op.off:
                buf.extend(b"\0" * (op.off - len(buf)))
            buf[op.off:op.off + len(payload)] = payload
        elif k == "trunc":
            buf = data.setdefault(op.inode, bytearray())
            if len(buf) > op.size:
                del buf[op.size:]
            else:
                buf.extend(b"\0" * (op.size - len(buf)))
        elif k == "link":
            names[os.path.join(op.dir, op.name)] = op.inode
        elif k == "unlink":
            names.pop(os.path.join(op.dir, op.name), None)
        elif k == "rename":
            src = os.path.join(op.sdir, op.sname)
            if names.get(src) == op.inode:
                del names[src]
            names[os.path.join(op.ddir, op.dname)] = op.inode
        elif k == "mkdir":
            dirs.add(os.path.join(op.dir, op.name))
    return {p: bytes(data.get(i, b"")) for p, i in names.items()}, dirs


def crash_states(ops, limit_drops=None):
    """Yields (cut, description, included, torn) for every crash state
    of the model (see the module comment); cut is the number of ops
    issued before the power cut."""
    made = durable_sets(ops)
    fs_kinds = ("write", "trunc", "link", "unlink", "rename", "mkdir")
    for cut in range(len(ops) + 1):
        if cut > 0 and ops[cut - 1].kind not in fs_kinds + (
                "fsync", "dirsync", "syncfs"):
            continue
        prefix = set(range(cut))
        pending = [i for i in range(cut)
                   if ops[i].kind in fs_kinds and made[i] >= cut]
        yield cut, "prefix", prefix, None
        if pending:
            yield cut, "durable only", prefix - set(pending), None
        for j in pending[-limit_drops:] if limit_drops else pending:
            yield cut, f"without op {j}", prefix - {j}, None
        writes = [i for i in pending if ops[i].kind == "write"]
        if writes:
            yield cut, f"op {writes[-1]} torn", prefix, (writes[-1], "half")
            yield cut, f"op {writes[-1]} zeros", prefix, (writes[-1], "zeros")
