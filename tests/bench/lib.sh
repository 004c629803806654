# Shell functions shared by the benchmark scripts (bench.sh, loopcost.sh);
# sourced, not run. The caller sets $work (a private temporary directory),
# $size (message bytes) and, for start_daemon, $SMARTHOSTD.

smtp_source=/usr/sbin/smtp-source
smtp_sink=/usr/sbin/smtp-sink
python=/usr/bin/python3
[ -x "$python" ] || python=python3
bench_dir=$(cd "$(dirname "$0")" && pwd)
clk_tck=$(getconf CLK_TCK)

need_postfix_tools() {
	for tool in "$smtp_source" "$smtp_sink"; do
		if [ ! -x "$tool" ]; then
			echo "bench: $tool is missing: apt-get install postfix" \
			    "(tests/bootstrap.sh bench does)" >&2
			exit 1
		fi
	done
}

# wait_gone PID: waits up to 10 s for PID to end; fails if it did not.
wait_gone() {
	_i=0
	while kill -0 "$1" 2>/dev/null && [ $_i -lt 100 ]; do
		sleep 0.1
		_i=$((_i + 1))
	done
	! kill -0 "$1" 2>/dev/null
}

# Stops a process we started: TERM, up to 10 s, then KILL.
stop_pid() {
	[ -n "$1" ] || return 0
	kill "$1" 2>/dev/null || return 0
	wait_gone "$1" || kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

fail() {
	echo "bench: $*" >&2
	if [ -n "${daemon_pid:-}" ] && [ -f "$work/daemon.log" ]; then
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

# Messages smtp-sink has seen so far (its -c counter, last update).
sink_count() {
	tail -c 300 "$work/sink.out" | tr '\r' '\n' |
	    sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1 | grep . ||
	    echo 0
}

# wait_sink COUNT TIMEOUT: until the sink has seen COUNT messages; sets
# $t2 to the time it had. Returns 1 on timeout.
wait_sink() {
	_i=0
	while [ "$(sink_count)" -lt "$1" ]; do
		if [ $_i -ge $(($2 * 20)) ]; then
			echo "bench: the sink has $(sink_count) of $1" \
			    "messages after $2 s" >&2
			return 1
		fi
		sleep 0.05
		_i=$((_i + 1))
	done
	t2=$(now)
}

# start_sink: Postfix's smtp-sink on a free loopback port ($sink_port),
# counting messages into $work/sink.out.
start_sink() {
	sink_port=$(free_port)
	_user=
	[ "$(id -u)" -ne 0 ] || _user="-u nobody"
	# shellcheck disable=SC2086
	"$smtp_sink" $_user -c "127.0.0.1:$sink_port" 1000 \
	    >"$work/sink.out" 2>&1 &
	sink_pid=$!
	wait_port "$sink_port" || fail "smtp-sink did not start"
}

# daemon_conf NAME RELAY_PORT [RELAY_OPTIONS]: a config with a fresh spool
# relaying to 127.0.0.1:RELAY_PORT (clear text unless RELAY_OPTIONS say
# otherwise), listening on a free loopback port and on $work/NAME.sock.
daemon_conf() {
	spool=$work/spool-$1
	_tls=${3:-'tls = "none";'}
	cat >"$work/$1.conf" <<EOF
hostname = "bench.test";
spool = "$spool";
spool_sync = "${spool_sync:-fsync}";
shutdown_timeout = 5;
listen = ( { address = "127.0.0.1"; port = "0"; },
           { path = "$work/$1.sock"; } );
limits = { max_sessions = 200; max_sessions_per_client = 200; };
queue = { retry_min = 1; retry_max = 10; };
relays = {
  up = { type = "smtp"; host = "127.0.0.1"; port = "$2";
         $_tls max_connections = 20; };
};
EOF
}

# start_daemon NAME [WRAPPER...]: smarthostd on $work/NAME.conf, its pid
# in $daemon_pid and its TCP port in $daemon_port. A wrapper (valgrind,
# strace) runs the daemon under it; the pid is then the wrapper's.
start_daemon() {
	_name=$1
	shift
	: >"$work/daemon.log"
	"$@" "$SMARTHOSTD" -c "$work/$_name.conf" >"$work/daemon.log" 2>&1 &
	daemon_pid=$!
	_i=0
	until grep -q 'started, pid=' "$work/daemon.log"; do
		kill -0 "$daemon_pid" 2>/dev/null ||
		    fail "smarthostd exited during start-up"
		[ $_i -lt 600 ] || fail "smarthostd did not start within 60 s"
		sleep 0.1
		_i=$((_i + 1))
	done
	daemon_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' \
	    "$work/daemon.log" | head -n 1)
	[ -n "$daemon_port" ] || fail "no 'listening on 127.0.0.1:PORT' line"
}

# Stops the daemon, then its wrapper if it has one (strace runs it as a
# child and would leave it running if stopped first).
stop_daemon() {
	_real=$(sed -n 's/.*started, pid=\([0-9]*\).*/\1/p' "$work/daemon.log" |
	    head -n 1)
	if [ -n "$_real" ] && [ "$_real" != "$daemon_pid" ]; then
		kill "$_real" 2>/dev/null || true
		wait_gone "$_real" || kill -9 "$_real" 2>/dev/null || true
	fi
	stop_pid "$daemon_pid"
	daemon_pid=
}

# source_load CLIENTS MSGS TARGET: smtp-source's load (one connection per
# message, as cron jobs and scripts submit), timed into $t0 and $t1, its
# CPU seconds (user + system) in $source_cpu. TARGET is 127.0.0.1:PORT or
# unix:PATH.
#
# The CPU is the cutime + cstime of a shell whose only child is timeout,
# read by that shell itself (the builtin read, no process of its own) once
# timeout has reaped smtp-source: so it holds smtp-source and timeout
# (which only waits) and nothing of the bench's other children, its probes
# included. /proc counts in clock ticks (10 ms at 100 Hz).
source_load() {
	t0=$(now)
	# shellcheck disable=SC2016
	sh -c 'out=$1; shift; "$@" || exit; read -r s </proc/$$/stat
	    echo "$s" >"$out"' sh "$work/source.stat" \
	    timeout 900 "$smtp_source" -s "$1" -m "$2" -l "$size" \
	    -f from@example.org -t to@example.net "$3" ||
	    fail "smtp-source -s $1 -m $2 $3 failed"
	t1=$(now)
	# Fields 16 and 17 of proc(5), counted after the ")" that ends the
	# command name: state is the first there, so they are $14 and $15.
	source_cpu=$(sed 's/.*) //' "$work/source.stat" |
	    awk -v hz="$clk_tck" '{ printf "%.3f", ($14 + $15) / hz }')
}
