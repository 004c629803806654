#!/bin/sh
# make bench: how fast smarthostd accepts and relays mail, measured the way
# DESIGN.md's performance envelope was, with Postfix's smtp-source as the
# client and smtp-sink (which stores nothing) as the upstream.
#
#   ceiling      smtp-source straight into smtp-sink: the most any relay can
#                show on this machine
#   smarthostd   smtp-source -> smarthostd -> smtp-sink (clear text)
#   sendmail     smarthost-sendmail runs (one process per message, as cron
#                and mail(1) use it) -> smarthostd's Unix socket -> smtp-sink
#
# accept/s is messages over the time smtp-source took (every message was
# answered 250, so it is on disk); end-to-end/s is messages over the time
# until the spool's queue/ is empty again. Peak RSS is the daemon's VmHWM.
#
# Environment: SMARTHOSTD (required), SMARTHOST_SENDMAIL (default: next
# to SMARTHOSTD), BENCH_MSGS_C1 (2000), BENCH_MSGS_C20 (5000),
# BENCH_MSGS_SENDMAIL (500), BENCH_SIZE (4096 bytes), BENCH_DRAIN_TIMEOUT
# (180 s), BENCH_SPOOL_SYNC (fsync or syncfs, the spool_sync setting),
# TMPDIR.
set -eu

: "${SMARTHOSTD:?SMARTHOSTD must name the smarthostd binary}"
msgs_c1=${BENCH_MSGS_C1:-2000}
msgs_c20=${BENCH_MSGS_C20:-5000}
msgs_sendmail=${BENCH_MSGS_SENDMAIL:-500}
sendmail=${SMARTHOST_SENDMAIL:-$(dirname "$SMARTHOSTD")/smarthost-sendmail}
size=${BENCH_SIZE:-4096}
drain_timeout=${BENCH_DRAIN_TIMEOUT:-180}
spool_sync=${BENCH_SPOOL_SYNC:-fsync}
smtp_source=/usr/sbin/smtp-source
smtp_sink=/usr/sbin/smtp-sink
python=/usr/bin/python3
[ -x "$python" ] || python=python3

for tool in "$smtp_source" "$smtp_sink"; do
	if [ ! -x "$tool" ]; then
		echo "bench: $tool is missing: apt-get install postfix" \
		    "(tests/bootstrap.sh bench does)" >&2
		exit 1
	fi
done

problems=
work=$(mktemp -d "${TMPDIR:-/tmp}/shd-bench.XXXXXX")
sink_pid=
daemon_pid=

# Stops a process we started: TERM, up to 10 s, then KILL.
stop_pid() {
	[ -n "$1" ] || return 0
	kill "$1" 2>/dev/null || return 0
	i=0
	while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

cleanup() {
	stop_pid "$daemon_pid"
	stop_pid "$sink_pid"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
	echo "bench: $*" >&2
	if [ -n "$daemon_pid" ] && [ -f "$work/daemon.log" ]; then
		echo "---- last lines of the daemon's log" >&2
		tail -n 30 "$work/daemon.log" >&2
	fi
	exit 1
}

now() {
	date +%s.%N
}

# per_second COUNT START END
per_second() {
	awk -v n="$1" -v a="$2" -v b="$3" \
	    'BEGIN { d = b - a; if (d <= 0) d = 1e-9; printf "%.0f", n / d }'
}

free_port() {
	"$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_port PORT: until something accepts connections there (10 s).
wait_port() {
	"$python" - "$1" <<'EOF'
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("nothing listens on port " + sys.argv[1])
        time.sleep(0.05)
EOF
}

# Messages smtp-sink has seen so far (its -c counters, last update).
sink_count() {
	tr '\r' '\n' <"$work/sink.out" |
	    sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1 | grep . ||
	    echo 0
}

vmhwm_mib() {
	awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

start_sink() {
	sink_port=$(free_port)
	user_opt=
	[ "$(id -u)" -ne 0 ] || user_opt="-u nobody"
	# shellcheck disable=SC2086
	"$smtp_sink" $user_opt -c "127.0.0.1:$sink_port" 1000 \
	    >"$work/sink.out" 2>&1 &
	sink_pid=$!
	wait_port "$sink_port" || fail "smtp-sink did not start"
}

# start_daemon NAME: a fresh spool, relaying to the sink in clear text.
start_daemon() {
	spool=$work/spool-$1
	cat >"$work/$1.conf" <<EOF
hostname = "bench.test";
spool = "$spool";
spool_sync = "$spool_sync";
shutdown_timeout = 5;
listen = ( { address = "127.0.0.1"; port = "0"; },
           { path = "$work/$1.sock"; } );
limits = { max_sessions = 200; };
queue = { retry_min = 1; retry_max = 10; };
relays = {
  sink = { type = "smtp"; host = "127.0.0.1"; port = "$sink_port";
           tls = "none"; };
};
EOF
	: >"$work/daemon.log"
	"$SMARTHOSTD" -c "$work/$1.conf" >"$work/daemon.log" 2>&1 &
	daemon_pid=$!
	i=0
	until grep -q 'started, pid=' "$work/daemon.log"; do
		kill -0 "$daemon_pid" 2>/dev/null ||
		    fail "smarthostd exited during start-up"
		[ $i -lt 100 ] || fail "smarthostd did not start within 10 s"
		sleep 0.1
		i=$((i + 1))
	done
	daemon_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' \
	    "$work/daemon.log" | head -n 1)
	[ -n "$daemon_port" ] || fail "no 'listening on 127.0.0.1:PORT' line"
}

stop_daemon() {
	stop_pid "$daemon_pid"
	daemon_pid=
}

queue_empty() {
	[ -z "$(ls -A "$spool/queue" 2>/dev/null)" ]
}

# source CLIENTS MSGS PORT: the load, timed into $t0 and $t1.
source_load() {
	t0=$(now)
	timeout 600 "$smtp_source" -s "$1" -m "$2" -l "$size" \
	    -f from@example.org -t to@example.net "127.0.0.1:$3" ||
	    fail "smtp-source -s $1 -m $2 failed"
	t1=$(now)
}

row() {
	printf '%-12s %7s %6s %9s %13s %9s %9s\n' "$@"
}

ceiling() {
	before=$(sink_count)
	source_load "$1" "$2" "$sink_port"
	sleep 0.2
	delivered=$(($(sink_count) - before))
	row ceiling "$1" "$2" "$(per_second "$2" "$t0" "$t1")" - \
	    "$delivered" -
}

# drain_row NAME CLIENTS MSGS: waits for the queue to empty, prints the
# row (accept/s from $t0 and $t1) and stops the daemon.
drain_row() {
	accept=$(per_second "$3" "$t0" "$t1")
	i=0
	while ! queue_empty; do
		kill -0 "$daemon_pid" 2>/dev/null || fail "smarthostd died"
		if [ $i -ge $((drain_timeout * 20)) ]; then
			echo "bench: queue not empty after ${drain_timeout} s" >&2
			break
		fi
		sleep 0.05
		i=$((i + 1))
	done
	if queue_empty; then
		t2=$(now)
		e2e=$(per_second "$3" "$t0" "$t2")
	else
		e2e=timeout
	fi
	sleep 0.2
	delivered=$(($(sink_count) - before))
	hwm=$(vmhwm_mib "$daemon_pid")
	stop_daemon
	row "$1" "$2" "$3" "$accept" "$e2e" "$delivered" "$hwm"
	if [ "$delivered" -ne "$3" ]; then
		echo "bench: the sink got $delivered of $3 messages" >&2
		problems=yes
	fi
}

relay() {
	start_daemon "c$1"
	before=$(sink_count)
	source_load "$1" "$2" "$daemon_port"
	drain_row smarthostd "$1" "$2"
}

# sendmail_load PARALLEL MSGS: MSGS runs of smarthost-sendmail, PARALLEL
# at a time, each submitting one message over the Unix socket.
sendmail_load() {
	start_daemon "s$1"
	"$python" -c 'import sys
sys.stdout.write("Subject: bench\n\n" + ("x" * 75 + "\n") * (int(sys.argv[1]) // 76))' \
	    "$size" >"$work/message"
	before=$(sink_count)
	t0=$(now)
	seq "$2" | timeout 600 xargs -P "$1" -I{} sh -c \
	    '"$1" -C "$2" -i to@example.net <"$3" || exit 255' sh \
	    "$sendmail" "$work/s$1.conf" "$work/message" ||
	    fail "smarthost-sendmail failed"
	t1=$(now)
	drain_row sendmail "$1" "$2"
}

echo "smarthostd bench: $size-byte messages, spool on" \
    "$(df -PT "$work" | awk 'NR == 2 { print $2 " (" $1 ")" }'), $(nproc) cores"
start_sink
row case clients msgs accept/s end-to-end/s delivered "RSS MiB"
ceiling 1 "$msgs_c1"
ceiling 20 "$msgs_c20"
ceiling_c20=$(per_second "$msgs_c20" "$t0" "$t1")
relay 1 "$msgs_c1"
relay 20 "$msgs_c20"
accept_c20=$accept
if [ -x "$sendmail" ]; then
	sendmail_load 1 "$msgs_sendmail"
	sendmail_load 4 "$msgs_sendmail"
else
	echo "bench: $sendmail missing: sendmail rows skipped" >&2
	problems=yes
fi

echo
echo "Reference (DESIGN.md, same class of machine): Postfix as a null client"
echo "accepts ~195 msg/s from 1 client and ~390 from 20, ~290/s end to end."
awk -v a="$accept_c20" -v c="$ceiling_c20" 'BEGIN {
	printf "At 20 clients smarthostd accepts %.1fx Postfix (goal >= 5x)", a / 390
	printf " and %.0f%% of the sink ceiling (goal >= 50%%).\n", 100 * a / c
}'
[ -z "$problems" ]
