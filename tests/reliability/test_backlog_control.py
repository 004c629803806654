"""smarthostctl queue on a large backlog: the listing streams a page at a
time, its envelopes read off the event loop, so SMTP clients and other
control requests are served while it runs, and it is complete and in
order.

The daemon starts on a spool written directly (tests/reliability/
backlog.py's prefill: every message deferred once, next try an hour
away, the upstream down). A control client asks for the JSON listing,
reads its first line and then stops reading. While it holds the listing
there, the test
  - submits a message over SMTP (a full transaction, 250 expected), and
  - deletes the last message of the backlog over a second control
    connection, and shows another (its text read off the loop too);
then reads the rest. The listing must hold every prefilled message but
the deleted one, exactly once, in id order, and the new message after
them: the pages after the pause were read after it, which a listing built
at once, before the client read anything, would not show. The listing is
far larger than what the daemon buffers for one client
(CONTROL_OUTPUT_PAUSE, 1 MiB, plus the socket's buffers), so the pause
holds it mid-way whatever the timing.

Then "delete all" removes the whole backlog (no file read), naming each
message in order, and the spool empties.

Figures (printed, never asserted): the MAIL..250 round trip of a probe
client with the daemon idle and while a listing is read as fast as the
client can, and how long that listing took.

Short (make check): 12,000 messages. Long (make check-reliability):
100,000.
"""

import json
import os
import threading
import time

from backlog import ControlReader, control, control_connect, prefill, \
    probe_round_trips, quantile_ms
from conftest import scale
from harness import free_port, make_message, send_message, wait_until

N = scale(12000, 100000)


def control_path(daemon):
    return os.path.join(daemon.settings["spool"], "control.sock")


def listing_ids(lines):
    return [json.loads(line)["id"] for line in lines]


def spool_of(daemon):
    return daemon.settings["spool"]


def test_queue_listing_streams_while_clients_are_served(daemon_factory,
                                                        figures):
    dead = free_port()
    daemon = daemon_factory(
        dead, start=False,
        queue={"retry_min": 3600, "retry_max": 3600, "lifetime": "5d",
               "workers": 2},
        relays={"upstream": {"tls": "none"}})
    prefill(spool_of(daemon), N, 1024)
    prefilled = sorted(os.listdir(os.path.join(spool_of(daemon), "queue")))
    assert len(prefilled) == N
    daemon.start()
    daemon.wait_log("every message found at start has been read",
                    timeout=max(60, N / 200))

    # The probe's latency with the daemon idle.
    idle = []
    stop = threading.Event()
    t = threading.Thread(target=probe_round_trips, args=(daemon.port, stop, idle))
    t.start()
    time.sleep(1)
    stop.set()
    t.join()

    # A listing held mid-way by its reader.
    held = control_connect(control_path(daemon))
    held.sendall(b"queue json\n")
    reader = ControlReader(held)
    assert reader.line() == "ok"
    first = json.loads(reader.line())
    assert first["id"] == prefilled[0]

    # Served meanwhile: an SMTP transaction and another control request.
    new_id = send_message(daemon, make_message("during the listing", "x"))
    last = prefilled[-1]
    status, lines = control(control_path(daemon), f"delete {last}")
    assert status == "ok", (status, lines)
    assert lines == [f"{last}: deleted"]
    status, lines = control(control_path(daemon),
                            f"show {prefilled[-2]} headers")
    assert status == "ok", (status, lines)
    assert f"id: {prefilled[-2]}" in lines
    assert f"Message-Id: <prefill.{N - 2}@example.org>" in lines, lines
    status, _ = control(control_path(daemon), f"show {last}")
    assert status == f"error {last}: no such message", status

    rest = reader.rest()
    held.close()
    listed = [first["id"]] + listing_ids(rest)
    assert listed == sorted(listed), "listing not in id order"
    assert len(listed) == len(set(listed)), "a message listed twice"
    assert last not in listed, "deleted during the pause, yet listed"
    assert listed[-1] == new_id, "queued during the pause, not listed"
    assert listed[:-1] == prefilled[:-1], "prefilled messages missing"

    # The probe's latency while a listing is read as fast as it comes.
    # The probe is connected and has made a first round trip before the
    # listing starts (its connection and greeting must not race a
    # listing that a fast machine serves in a fraction of a second);
    # only the round trips that end after the listing started count.
    warm = []
    stop = threading.Event()
    t = threading.Thread(target=probe_round_trips,
                         args=(daemon.port, stop, warm))
    t.start()
    try:
        wait_until(lambda: warm or not t.is_alive(), 60,
                   "the probe's first round trip")
        assert warm, "the probe failed before its first round trip"
        t0 = time.monotonic()
        first_trips = len(warm)
        status, lines = control(control_path(daemon), "queue")
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    busy = warm[first_trips:]
    assert status == "ok"
    assert sum(1 for line in lines if not line.startswith(" ")) == N
    assert len(busy) > 0, "no probe round trip during the listing"

    # delete all reads no file either: every message goes, in order.
    status, lines = control(control_path(daemon), "delete all")
    assert status == "ok", status
    assert lines == [f"{qid}: deleted" for qid in listed], lines[:3]
    # A removal is an unlink and a directory sync per group: 12,000 took
    # over 30 s under ASan on a loaded machine (8,065 done by then).
    wait_until(lambda: not os.listdir(os.path.join(spool_of(daemon),
                                                   "queue")),
               max(120, N / 100), "the spool to empty")
    # The daemon counts a message until its removal's callback ran.
    wait_until(lambda: "queued: 0" in control(control_path(daemon),
                                              "status")[1],
               30, "the daemon to count no message")

    def ms(values, q):
        return round(quantile_ms(values, q), 2)

    figures(messages=N, listing_seconds=round(took, 2),
            probe_idle_median_ms=ms(idle, 0.5),
            probe_idle_max_ms=ms(idle, 1.0),
            probe_listing_median_ms=ms(busy, 0.5),
            probe_listing_p99_ms=ms(busy, 0.99),
            probe_listing_max_ms=ms(busy, 1.0),
            probe_round_trips_during_listing=len(busy))
