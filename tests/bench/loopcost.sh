#!/bin/sh
# make bench-callgrind: what one accepted message costs the daemon's loop,
# counted rather than timed, so the figures hold on a loaded machine.
#
#   instructions/msg  smarthostd under valgrind's callgrind while
#                     smtp-source sends N messages (one connection each) and
#                     they are relayed to smtp-sink; the whole process's
#                     instructions over N, and the part spent inside the
#                     inbound session's callbacks (accept, read, write,
#                     commit), over N
#   syscalls/msg      the same load with the daemon under strace -c -f: the
#                     calls of every thread over N, per call name
#
# Start-up and shutdown are in the totals; with N in the thousands they
# are a small part (the "instructions/msg" line says how many N).
#
# LOOPCOST_TLS=implicit relays through an implicit TLS upstream instead
# (probe.py's tls-front before smtp-sink, with a certificate made for the
# run and verified): what TLS adds to the relaying side.
#
# Environment: SMARTHOSTD (required), LOOPCOST_MSGS (1000), BENCH_SIZE
# (4096 bytes), LOOPCOST_TLS (none or implicit), LOOPCOST_TOOLS (the runs
# to make: "callgrind strace"), TMPDIR.
set -eu

: "${SMARTHOSTD:?SMARTHOSTD must name the smarthostd binary}"
msgs=${LOOPCOST_MSGS:-1000}
size=${BENCH_SIZE:-4096}
tls=${LOOPCOST_TLS:-none}
tools=${LOOPCOST_TOOLS:-callgrind strace}
work=$(mktemp -d "${TMPDIR:-/tmp}/shd-loopcost.XXXXXX")
sink_pid=
daemon_pid=
front_pid=
. "$(dirname "$0")/lib.sh"
need_postfix_tools
case $tls in
none | implicit) ;;
*) fail "LOOPCOST_TLS must be none or implicit" ;;
esac
for tool in valgrind callgrind_annotate strace; do
	command -v "$tool" >/dev/null ||
	    { echo "bench: $tool is missing" >&2; exit 1; }
done

cleanup() {
	stop_pid "$daemon_pid"
	stop_pid "$front_pid"
	stop_pid "$sink_pid"
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run NAME WRAPPER...: N messages through a fresh daemon under WRAPPER,
# waits until the sink has them all, stops the daemon (TERM, so the
# wrapper writes its figures).
run() {
	_run=$1
	shift
	daemon_conf "$_run" "$relay_port" "$relay_tls"
	start_daemon "$_run" "$@"
	before=$(sink_count)
	source_load 1 "$msgs" "127.0.0.1:$daemon_port"
	wait_sink $((before + msgs)) 600 || fail "relay incomplete"
	stop_daemon
}

start_sink
relay_port=$sink_port
relay_tls=
if [ "$tls" = implicit ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	    -nodes -keyout "$work/up.key" -out "$work/up.pem" -days 2 \
	    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" \
	    >/dev/null 2>&1 || fail "openssl: certificate"
	$python "$bench_dir/probe.py" tls-front "$work/up.pem" "$work/up.key" \
	    "$sink_port" "$work/front.port" &
	front_pid=$!
	_i=0
	until [ -s "$work/front.port" ]; do
		[ $_i -lt 100 ] || fail "the TLS front did not start"
		sleep 0.1
		_i=$((_i + 1))
	done
	relay_port=$(cat "$work/front.port")
	relay_tls="tls = \"implicit\"; ca_file = \"$work/up.pem\";"
fi
echo "smarthostd loop cost: $msgs messages of $size bytes, 1 client," \
    "one connection per message, upstream TLS: $tls"

case " $tools " in
*" callgrind "*)
	run callgrind valgrind --tool=callgrind \
	    --callgrind-out-file="$work/callgrind.out" --trace-children=no
	total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$work/callgrind.out")
	[ -n "$total" ] || fail "no callgrind summary"
	# Inclusive cost of the inbound side's entry points: everything the loop
	# does for a session, from accept to the reply after the commit.
	callgrind_annotate --inclusive=yes --threshold=100 "$work/callgrind.out" \
	    2>/dev/null >"$work/annotate.txt"
	inbound=$(awk '
		/:(accept_cb|session_read_cb|session_write_cb|session_resume_cb|session_event_cb|commit_done) / {
			gsub(",", "", $1); if ($1 ~ /^[0-9]+$/) sum += $1
		}
		END { printf "%.0f", sum }' "$work/annotate.txt")
	awk -v t="$total" -v i="$inbound" -v n="$msgs" 'BEGIN {
		printf "instructions/msg: %.0f whole daemon (accept and relay)," \
		    " %.0f in the inbound session callbacks\n", t / n, i / n
	}'
	;;
esac

case " $tools " in
*" strace "*)
	run strace strace -f -c -o "$work/strace.out"
	awk -v n="$msgs" '
		$1 ~ /^[0-9.]+$/ && NF >= 5 {
			calls = $4; name = $NF
			if (name == "total") { total = calls; next }
			row[name] = calls
		}
		END {
			printf "syscalls/msg: %.1f (all threads)\n", total / n
			for (s in row)
				if (row[s] / n >= 0.5)
					printf "  %-16s %6.2f\n", s, row[s] / n | \
					    "sort -k2 -rn"
		}' "$work/strace.out"
	;;
esac
