"""A reader of the spool log (src/spoollog.h, src/logrec.h) for the
reliability tests: which messages the log holds, replayed the way the
daemon replays it at start, and the tombstones a write put there. Written
from the documented format, independently of the C code, so that a change
of the format that the documentation does not follow fails here."""

import os
import struct

HEADER = struct.Struct("<4sHHIIQII")
MAGIC = b"SHLG"
MESSAGE, STATE, DONE = 1, 2, 3
PAYLOAD_MAX = 64 * 1024 * 1024


def _table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def records(data, salt, check_payload=True):
    """Yields (type, id, aux, payload, offset) for the valid records at the
    start of data, a log file's bytes (or a write of whole records)."""
    off = 0
    while len(data) - off >= HEADER.size:
        magic, typ, reserved, length, aux, qid, pcrc, hcrc = \
            HEADER.unpack_from(data, off)
        if magic != MAGIC or reserved != 0 or length > PAYLOAD_MAX:
            return
        if crc32c(data[off:off + 28],
                  crc32c(struct.pack("<Q", salt))) != hcrc:
            return
        if typ not in (MESSAGE, STATE, DONE) or (
                typ == MESSAGE and aux > length) or (
                typ != MESSAGE and aux != 0):
            return
        start = off + HEADER.size
        payload = data[start:start + length]
        if len(payload) < length or (
                check_payload and crc32c(payload) != pcrc):
            return
        yield typ, f"{qid:016X}", aux, payload, off
        off = start + length


def live_files(spool, check_payload=True):
    """Replays the log under spool as the daemon does at start: a dict of
    the live messages' ids, each to (the name of the file that holds its
    message record, the record's length). With check_payload=False the
    payloads' CRCs are not checked (the headers' still are, and they are a
    small part of the bytes)."""
    logdir = os.path.join(spool, "log")
    try:
        names = sorted(os.listdir(logdir))
    except FileNotFoundError:
        return {}
    live = {}
    for name in names:
        try:
            with open(os.path.join(logdir, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        for typ, qid, _, payload, _ in records(data, int(name, 16),
                                               check_payload):
            if typ == MESSAGE:
                live[qid] = (name, HEADER.size + len(payload))
            elif typ == DONE:
                live.pop(qid, None)
    return live


def live_ids(spool, check_payload=True):
    """The ids of the messages the log under spool holds."""
    return set(live_files(spool, check_payload))


def tombstones(data, salt):
    """The ids buried by a write of records (a write the daemon makes
    always starts at a record)."""
    return [qid for typ, qid, _, _, _ in records(data, salt,
                                                check_payload=False)
            if typ == DONE]


if __name__ == "__main__":
    # spoolread.py SPOOL: how many messages the spool log holds.
    import sys
    print(len(live_ids(sys.argv[1])))
