#!/bin/sh
# make bench: smarthostd side by side with Postfix in one run, on this
# machine, with Postfix's smtp-source as the client and smtp-sink (which
# stores nothing) as the upstream. Only ratios from one run mean anything
# on a shared machine; the figures are printed, never asserted.
#
# Each run (BENCH_RUNS, 3) measures, with BENCH_MSGS (2000) messages of
# BENCH_SIZE (4096) bytes per phase, one connection per message:
#   smtp-source -> smtp-sink       the load generator's limit (c=1, c=20)
#   Postfix null client            its own instance under the work
#                                  directory (own config_directory,
#                                  queue_directory, data_directory; never
#                                  the system's), relayhost = the sink
#   smarthostd                     TCP and its Unix socket, c=1 and c=20
#   via a STARTTLS upstream        a second Postfix instance (smtpd with
#                                  TLS, passing each message straight to
#                                  the sink as a before-queue proxy filter)
#                                  as the upstream of both, c=1 and c=20;
#                                  the TLS connections the upstream counted
#                                  in each phase, and how many of
#                                  smarthostd's resumed a session (its log)
# For each: accept/s (messages over the time smtp-source took; every one
# was answered 250), end to end/s (until the sink had them all), CPU ms per
# message (user + system of all the relay's processes, reaped children
# included, from accept to the last delivery) and peak PSS (summed over
# its processes, sampled every 0.25 s). Medians of the runs are printed.
# Then, once: e2e latency (one message at a time, from connect until the
# sink counted it; median of BENCH_LATENCY_MSGS, 30), a BENCH_BIG_MB (50)
# MB message (the daemon's RSS growth and MB/s, beside a cold `cat` of a
# file that size on the spool's disk). The disk's limits are probed in
# every run too (a file + fsync + directory fsync per message; an
# append-only log with one fdatasync per commit, and per 8 commits; a log
# written in place into a preallocated file and into blocks written before,
# one fdatasync per commit; each for at most 5 s), and from them the most
# one client can get from a relay that syncs before its 250: 1 / (the
# time smtp-source -> smtp-sink takes per message + one fdatasync).
#
# Every smarthostd phase also counts the upstream connections it opened
# (the daemon's smarthostd_relay_connections_total, read through
# smarthostctl before it stops), printed per phase as medians.
#
# Every phase also records the CPU per message of smtp-source and
# smtp-sink, the STARTTLS phases that of the upstream Postfix instance;
# from them each run computes what the cores allow at c=20 (bounds() has
# the arithmetic): the share of smtp-source -> smtp-sink that a relay
# costing what smtp-sink costs could accept, the daemon CPU per message
# that 80 % would need, and the end-to-end rate through the STARTTLS
# upstream with a relay that costs nothing, as a multiple of Postfix's.
#
# Postfix needs root (postfix start); without root its rows are skipped.
# BENCH_PHASES=tls runs only the STARTTLS phases (with Postfix: root), and
# no latency, big message or disk probes; BENCH_PHASES=relay only
# smarthostd's clear-text phases (TCP and Unix socket, c=1 and c=20),
# without Postfix, the load generator's limit or any probe;
# BENCH_PHASES=accept what "all" runs but the STARTTLS phases, the latency
# probes and the big message: the load generator's limit, Postfix and
# smarthostd's clear-text phases, and the disk probes.
# Environment: SMARTHOSTD (required), BENCH_RUNS, BENCH_MSGS, BENCH_SIZE,
# BENCH_LATENCY_MSGS, BENCH_BIG_MB, BENCH_DRAIN_TIMEOUT (300 s),
# BENCH_SPOOL_SYNC (fsync or syncfs), TMPDIR (the disk measured).
set -eu

: "${SMARTHOSTD:?SMARTHOSTD must name the smarthostd binary}"
runs=${BENCH_RUNS:-3}
msgs=${BENCH_MSGS:-2000}
size=${BENCH_SIZE:-4096}
latency_msgs=${BENCH_LATENCY_MSGS:-30}
big_mb=${BENCH_BIG_MB:-50}
drain_timeout=${BENCH_DRAIN_TIMEOUT:-300}
spool_sync=${BENCH_SPOOL_SYNC:-fsync}
phases=${BENCH_PHASES:-all}
work=$(mktemp -d "${TMPDIR:-/tmp}/shd-bench.XXXXXX")
# Postfix's daemons run as postfix and must reach their queue below it.
chmod 711 "$work"
sink_pid=
daemon_pid=
sampler_pid=
pf_dirs=
. "$(dirname "$0")/lib.sh"
need_postfix_tools
case $phases in
all | tls | relay | accept) ;;
*) fail "BENCH_PHASES must be all, tls, relay or accept" ;;
esac
probe="$python $bench_dir/probe.py"
smarthostctl=$(dirname "$SMARTHOSTD")/smarthostctl
[ -x "$smarthostctl" ] || fail "no smarthostctl beside $SMARTHOSTD"
results=$work/results
: >"$results"

postfix_stop() {
	postfix -c "$1/etc" stop >/dev/null 2>&1 || true
	_pid=$(awk '{ print $1; exit }' "$1/queue/pid/master.pid" 2>/dev/null ||
	    true)
	[ -n "$_pid" ] || return 0
	if ! wait_gone "$_pid"; then
		postfix -c "$1/etc" abort >/dev/null 2>&1 || true
		kill -9 "$_pid" 2>/dev/null || true
	fi
}

cleanup() {
	stop_pid "$sampler_pid"
	[ -z "$daemon_pid" ] || stop_daemon
	for d in $pf_dirs; do
		postfix_stop "$d"
	done
	stop_pid "$sink_pid"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# record CASE METRIC VALUE
record() {
	echo "$1 $2 $3" >>"$results"
}

# ---- Postfix instances ----

# postfix_instance NAME PORT: a Postfix of its own in $work/NAME (config,
# queue and data directories), its smtpd on 127.0.0.1:PORT; main.cf lines
# on standard input are appended. Sets pf_master to its master's pid.
postfix_instance() {
	_d=$work/$1
	mkdir -p "$_d/etc" "$_d/queue" "$_d/data"
	chown postfix "$_d/data"
	# Debian's master.cf without chroot (a chroot needs copies of /etc
	# files in the queue directory) and without the local delivery
	# agents a null client does not run.
	cat >"$_d/etc/master.cf" <<EOF
127.0.0.1:$2 inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
EOF
	{
		cat <<EOF
compatibility_level = 3.6
queue_directory = $_d/queue
data_directory = $_d/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench-$1
maillog_file = $_d/maillog
maillog_file_prefixes = $_d
myhostname = $1.bench.test
mydestination =
local_transport = error:local delivery is off
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
message_size_limit = 0
biff = no
EOF
		cat
	} >"$_d/etc/main.cf"
	pf_dirs="$pf_dirs $_d"
	if ! postfix -c "$_d/etc" start >/dev/null 2>&1; then
		tail -n 20 "$_d/maillog" >&2 2>/dev/null || true
		fail "postfix -c $_d/etc start failed"
	fi
	wait_port "$2" || fail "Postfix $1 does not listen on $2"
	pf_master=$(awk '{ print $1; exit }' "$_d/queue/pid/master.pid")
}

# ---- measuring ----

# per_msg SECONDS0 SECONDS1: the CPU between two readings in ms per
# message of the phase.
per_msg() {
	awk -v a="$1" -v b="$2" -v n="$msgs" \
	    'BEGIN { printf "%.3f", (b - a) * 1000 / n }'
}

# measure CASE CLIENTS TARGET ROOT_PID: one phase of the load through a
# relay whose processes are ROOT_PID and its descendants. Besides the
# relay's CPU per message it records smtp-source's (srccpu) and
# smtp-sink's (sinkcpu, from the first connection until the sink had every
# message), the inputs of the bounds in the report.
measure() {
	before=$(sink_count)
	sinkcpu0=$($probe cpu "$sink_pid")
	cpu0=$($probe cpu "$4")
	rm -f "$work/stop"
	$probe pss-peak "$4" "$work/stop" >"$work/pss" &
	sampler_pid=$!
	source_load "$2" "$msgs" "$3"
	wait_sink $((before + msgs)) "$drain_timeout" ||
	    fail "$1 c=$2: not everything arrived"
	cpu1=$($probe cpu "$4")
	sinkcpu1=$($probe cpu "$sink_pid")
	touch "$work/stop"
	wait "$sampler_pid" || true
	sampler_pid=
	record "$1" "accept$2" "$(per_second "$msgs" "$t0" "$t1")"
	record "$1" "e2e$2" "$(per_second "$msgs" "$t0" "$t2")"
	record "$1" "cpu$2" "$(per_msg "$cpu0" "$cpu1")"
	record "$1" "pss$2" "$(cat "$work/pss")"
	record "$1" "srccpu$2" "$(per_msg 0 "$source_cpu")"
	record "$1" "sinkcpu$2" "$(per_msg "$sinkcpu0" "$sinkcpu1")"
}

# ceiling CLIENTS: smtp-source -> smtp-sink, the load generator's limit,
# with the CPU per message of each.
ceiling() {
	sinkcpu0=$($probe cpu "$sink_pid")
	source_load "$1" "$msgs" "127.0.0.1:$sink_port"
	sinkcpu1=$($probe cpu "$sink_pid")
	record sink "accept$1" "$(per_second "$msgs" "$t0" "$t1")"
	record sink "srccpu$1" "$(per_msg 0 "$source_cpu")"
	record sink "sinkcpu$1" "$(per_msg "$sinkcpu0" "$sinkcpu1")"
}

# TLS connections the STARTTLS upstream logged so far.
upstream_tls() {
	_n=$(grep -c 'TLS connection established' "$work/tlsup/maillog" \
	    2>/dev/null || true)
	echo "${_n:-0}"
}

# measure_tls CASE CLIENTS TARGET ROOT_PID: measure, the CPU per message
# of the upstream Postfix instance (upcpu: its master and every process
# below it, smtpd with TLS and the proxy filter included, reaped ones too)
# and its TLS connections of the phase (postlogd writes them a little
# later).
measure_tls() {
	_up0=$(upstream_tls)
	_upcpu0=$($probe cpu "$tlsup_pid")
	measure "$@"
	record "$1" "upcpu$2" "$(per_msg "$_upcpu0" "$($probe cpu "$tlsup_pid")")"
	sleep 1
	record "$1" "conns$2" $(($(upstream_tls) - _up0))
}

# relay_connections NAME: upstream connections the running daemon on
# $work/NAME.conf has opened since it started (every relay's).
relay_connections() {
	"$smarthostctl" -c "$work/$1.conf" metrics |
	    awk '/^smarthostd_relay_connections_total[{ ]/ { n += $NF }
	    END { printf "%d\n", n }'
}

# smarthostd_phase CASE NAME CLIENTS TCP|UNIX [RELAY_PORT RELAY_OPTIONS]
# With a relay port (the STARTTLS upstream), the phase's TLS connections
# are counted, and the resumed ones from the daemon's log.
smarthostd_phase() {
	daemon_conf "$2" "${5:-$sink_port}" "${6:-}"
	start_daemon "$2"
	if [ "$4" = UNIX ]; then
		_target=unix:$work/$2.sock
	else
		_target=127.0.0.1:$daemon_port
	fi
	if [ -n "${5:-}" ]; then
		measure_tls "$1" "$3" "$_target" "$daemon_pid"
		record "$1" "resumed$3" "$(grep -c 'connected, TLS.*session resumed' \
		    "$work/daemon.log" || true)"
	else
		measure "$1" "$3" "$_target" "$daemon_pid"
	fi
	record "$1" "upconns$3" "$(relay_connections "$2")"
	stop_daemon
}

# median CASE METRIC: of the recorded runs, "-" if none.
median() {
	awk -v c="$1" -v m="$2" '$1 == c && $2 == m { print $3 }' \
	    "$results" | sort -n | awk '{ v[NR] = $1 }
	    END {
		if (NR == 0) { print "-"; exit }
		if (NR % 2) print v[(NR + 1) / 2]
		else print (v[NR / 2] + v[NR / 2 + 1]) / 2
	    }'
}

# ratio A B [FORMAT]: A / B, "-" when either is missing.
ratio() {
	awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN {
		if (a == "-" || b == "-" || b + 0 == 0) print "-"
		else printf f "\n", a / b
	}'
}

# target NAME VALUE OP LIMIT: one line of the issue's targets.
# per_run CASE1 METRIC1 CASE2 METRIC2: the ratio of the two in each run,
# in run order (every run records them in the same order).
per_run() {
	awk -v c1="$1" -v m1="$2" -v c2="$3" -v m2="$4" '
		$1 == c1 && $2 == m1 { a[++na] = $3 }
		$1 == c2 && $2 == m2 { b[++nb] = $3 }
		END {
			for (i = 1; i <= na && i <= nb; i++)
				printf "%s%.2f", (i > 1 ? " " : ""), \
				    (b[i] > 0 ? a[i] / b[i] : 0)
			if (na == 0 || nb == 0)
				printf "-"
		}' "$results"
}

target() {
	awk -v n="$1" -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
		if (v == "-") s = "not measured"
		else if (op == ">=") s = (v + 0 >= l + 0) ? "met" : "NOT met"
		else s = (v + 0 <= l + 0) ? "met" : "NOT met"
		printf "  %-44s %8s (target %s %s): %s\n", n, v, op, l, s
	}'
}

# last CASE METRIC: the value of the run under way (every run records the
# same metrics in the same order), "-" if none.
last() {
	awk -v c="$1" -v m="$2" '$1 == c && $2 == m { x = $3 }
	    END { print (x == "" ? "-" : x) }' "$results"
}

# calc FORMAT EXPR NAME=VALUE...: the awk expression EXPR over the named
# values, printed with FORMAT; "-" when one of them was not measured.
calc() {
	_fmt=$1 _expr=$2
	shift 2
	_n=$#
	for _a; do
		[ "${_a#*=}" != - ] || { echo -; return 0; }
		set -- "$@" -v "$_a"
	done
	shift "$_n"
	awk "$@" "BEGIN { printf \"$_fmt\\n\", $_expr }"
}

# record_calc CASE METRIC FORMAT EXPR NAME=VALUE...: records calc's value
# unless an input is missing.
record_calc() {
	_c=$1 _m=$2
	shift 2
	_val=$(calc "$@")
	[ "$_val" = - ] || record "$_c" "$_m" "$_val"
}

# bounds: what this machine's cores allow at c=20, from the run under way.
#
# Accepting: smtp-source -> smtp-sink at c=20 fills the cores, so its rate
# is cores / W, W = the CPU per message of smtp-source + smtp-sink there
# (cores20 shows how much of the cores they used). A relay in between
# serves the same inbound conversation, which costs at least what
# smtp-sink spends on it (it stores, syncs and relays nothing), and makes
# smtp-sink its upstream, which costs it S_up per message (sinkcpu20 of
# smarthostd's phase: reused, pipelined connections). With the cores full
# the relay's rate is cores / (source + relay + S_up), so no relay gets
# more than W / (W + S_up) of the direct rate (ceil20, in %). For 80 %,
# source + relay + S_up = W / 0.8, so the daemon may spend
# W / 0.8 - S_up - smtp-source's CPU per message in its own phase
# (need20; srcextra20 is what smtp-source spent there beyond its CPU
# against smtp-sink); below zero, 80 % is out of reach for any relay here.
#
# STARTTLS upstream: a relay that costs nothing leaves the cores to
# smtp-source, the upstream Postfix instance and smtp-sink, as they cost
# in smarthostd's phase: cores / their sum is the end-to-end rate
# (tlsrate20), tlsx20 that rate over Postfix's own end to end through the
# same upstream.
bounds() {
	_sd=$(last sink srccpu20) _kd=$(last sink sinkcpu20)
	_sr=$(last smarthostd srccpu20) _ku=$(last smarthostd sinkcpu20)
	record_calc bound cores20 %.2f "(sd + kd) * r / 1000" sd="$_sd" \
	    kd="$_kd" r="$(last sink accept20)"
	record_calc bound smdcores20 %.2f "(sr + d + ku) * r / 1000" \
	    sr="$_sr" d="$(last smarthostd cpu20)" ku="$_ku" \
	    r="$(last smarthostd e2e20)"
	record_calc bound ceil20 %.1f "100 * (sd + kd) / (sd + kd + ku)" \
	    sd="$_sd" kd="$_kd" ku="$_ku"
	record_calc bound need20 %.3f "(sd + kd) / 0.8 - sr - ku" sd="$_sd" \
	    kd="$_kd" sr="$_sr" ku="$_ku"
	record_calc bound srcextra20 %.3f "sr - sd" sr="$_sr" sd="$_sd"
	_tls="s=$(last smarthostd-tls srccpu20)"
	record_calc bound tlsrate20 %.0f "n * 1000 / (s + u + k)" n="$cores" \
	    "$_tls" u="$(last smarthostd-tls upcpu20)" \
	    k="$(last smarthostd-tls sinkcpu20)"
	record_calc bound tlsx20 %.2f "n * 1000 / (s + u + k) / p" \
	    n="$cores" "$_tls" u="$(last smarthostd-tls upcpu20)" \
	    k="$(last smarthostd-tls sinkcpu20)" p="$(last postfix-tls e2e20)"
}

# ---- the run ----

cores=$(nproc)
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "smarthostd bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $cores cores ($cpu_model), kernel $(uname -r)," \
    "$(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' \
    /proc/meminfo)"
echo "spool disk: $(df -PT "$work" | awk 'NR == 2 { print $2 " on " $1 }')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$runs runs, $msgs messages of $size bytes per phase," \
    "spool_sync = $spool_sync"

have_postfix=
if [ "$phases" = relay ]; then
	: # smarthostd's phases alone
elif [ "$(id -u)" -eq 0 ] && command -v postfix >/dev/null; then
	have_postfix=yes
else
	echo "bench: Postfix rows need root and postfix(1): skipped" >&2
fi

start_sink

if [ -n "$have_postfix" ]; then
	# The TLS upstream: smtpd with STARTTLS, each message passed before
	# queueing to the sink (smtp-sink cannot do TLS).
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	    -nodes -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 \
	    -subj /CN=bench-ca >/dev/null 2>&1 || fail "openssl: CA"
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$work/san"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	    -keyout "$work/up.key" -out "$work/up.csr" -subj /CN=localhost \
	    >/dev/null 2>&1 &&
	    openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" \
	    -CAkey "$work/ca.key" -CAcreateserial -out "$work/up.pem" -days 2 \
	    -extfile "$work/san" >/dev/null 2>&1 || fail "openssl: certificate"
	tls_port=$(free_port)
	postfix_instance tlsup "$tls_port" <<EOF
smtpd_tls_cert_file = $work/up.pem
smtpd_tls_key_file = $work/up.key
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_proxy_filter = 127.0.0.1:$sink_port
relayhost = [127.0.0.1]:$sink_port
EOF
	tlsup_pid=$pf_master
	pf_port=$(free_port)
	postfix_instance pf "$pf_port" <<EOF
relayhost = [127.0.0.1]:$sink_port
EOF
	pf_pid=$pf_master
	pftls_port=$(free_port)
	# encrypt, not verify: Postfix matches certificate names, not the
	# address literal of the relayhost. Connections are reused (TLS
	# through tlsproxy) and sessions resumed from the cache.
	postfix_instance pftls "$pftls_port" <<EOF
relayhost = [127.0.0.1]:$tls_port
smtp_tls_security_level = encrypt
smtp_tls_connection_reuse = yes
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache
EOF
	pftls_pid=$pf_master
fi

smd_tls="tls = \"starttls\"; ca_file = \"$work/ca.pem\";"
r=1
while [ $r -le "$runs" ]; do
	echo "run $r of $runs ..."
	if [ "$phases" = all ] || [ "$phases" = accept ]; then
		ceiling 1
		ceiling 20
	fi
	if [ -n "$have_postfix" ] &&
	    { [ "$phases" = all ] || [ "$phases" = accept ]; }; then
		measure postfix 1 "127.0.0.1:$pf_port" "$pf_pid"
		measure postfix 20 "127.0.0.1:$pf_port" "$pf_pid"
	fi
	if [ "$phases" != tls ]; then
		smarthostd_phase smarthostd "tcp$r-1" 1 TCP
		smarthostd_phase smarthostd "tcp$r-20" 20 TCP
		smarthostd_phase unix "unix$r-1" 1 UNIX
		smarthostd_phase unix "unix$r-20" 20 UNIX
	fi
	if [ -n "$have_postfix" ] && [ "$phases" != accept ]; then
		for c in 1 20; do
			measure_tls postfix-tls $c "127.0.0.1:$pftls_port" \
			    "$pftls_pid"
			smarthostd_phase smarthostd-tls "tls$r-$c" $c TCP \
			    "$tls_port" "$smd_tls"
		done
	fi
	bounds
	if [ "$phases" != all ] && [ "$phases" != accept ]; then
		r=$((r + 1))
		continue
	fi
	mkdir "$work/disk$r"
	set -- $($probe disk "$work/disk$r" "$msgs")
	rm -rf "$work/disk$r"
	record disk files "$1"
	record disk log "$2"
	record disk log8 "$3"
	record disk prealloc "$4"
	record disk written "$5"
	r=$((r + 1))
done

big_rate=- big_growth=- cat_rate=-
# latency and the big message: only with BENCH_PHASES=all
if [ "$phases" = all ]; then
	echo "latency probes ..."
	latency() {
		record "$1" latency "$($probe latency "$2" "$work/sink.out" \
		    "$latency_msgs" "$size")" || fail "latency probe $1"
	}
	latency sink "127.0.0.1:$sink_port"
	[ -z "$have_postfix" ] || latency postfix "127.0.0.1:$pf_port"
	daemon_conf lat "$sink_port"
	start_daemon lat
	latency smarthostd "127.0.0.1:$daemon_port"
	latency unix "unix:$work/lat.sock"
	stop_daemon

	echo "a ${big_mb} MB message ..."
	daemon_conf big "$sink_port"
	sed -i 's/max_sessions = 200;/max_sessions = 200; max_message_size = "1G";/' \
	    "$work/big.conf"
	start_daemon big
	set -- $($probe rss "$daemon_pid")
	rss0=$1
	before=$(sink_count)
	big_bytes=$((big_mb * 1048576))
	t0=$(now)
	timeout 600 "$smtp_source" -s 1 -m 1 -l "$big_bytes" \
	    -f from@example.org -t to@example.net "127.0.0.1:$daemon_port" ||
	    fail "smtp-source: the big message failed"
	t1=$(now)
	wait_sink $((before + 1)) "$drain_timeout" || fail "the big message"
	set -- $($probe rss "$daemon_pid")
	big_growth=$(awk -v a="$rss0" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1024 }')
	big_rate=$(awk -v n="$big_bytes" -v a="$t0" -v b="$t1" \
	    'BEGIN { printf "%.0f", n / 1e6 / (b - a) }')
	stop_daemon
	rm -rf "$work"/spool-*
	dd if=/dev/zero of="$work/catfile" bs=1M count="$big_mb" conv=fsync \
	    2>/dev/null || fail "dd"
	cat_rate=$($probe cold-read "$work/catfile")
	rm -f "$work/catfile"
fi

# ---- the report ----

v() {
	median "$1" "$2"
}
disk_files=$(v disk files)
disk_log=$(v disk log)
disk_log8=$(v disk log8)
disk_prealloc=$(v disk prealloc)
disk_written=$(v disk written)
# bound SYNCS_PER_S: 1 / (t_sink + t_fdatasync) with the sink's c=1 rate.
bound() {
	awk -v s="$(v sink accept1)" -v d="$1" 'BEGIN {
		if (s == "-" || d == "-" || s + 0 == 0 || d + 0 == 0) print "-"
		else printf "%.0f\n", 1 / (1 / s + 1 / d)
	}'
}
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-26s %9s %9s %9s %14s %9s %9s\n' "" "accept" "accept" "e2e" \
    "CPU ms/msg" "peak PSS" "e2e lat."
printf '%-26s %9s %9s %9s %14s %9s %9s\n' "" "c=1 /s" "c=20 /s" \
    "c=20 /s" "c=1 / c=20" "MiB" "ms"
row() {
	_pss=$(awk -v a="$(v "$1" pss1)" -v b="$(v "$1" pss20)" 'BEGIN {
		if (a == "-" && b == "-") print "-"
		else if (a == "-" || b + 0 > a + 0) print b
		else print a }')
	printf '%-26s %9s %9s %9s %14s %9s %9s\n' "$2" "$(v "$1" accept1)" \
	    "$(v "$1" accept20)" "$(v "$1" e2e20)" \
	    "$(v "$1" cpu1) / $(v "$1" cpu20)" "$_pss" "$(v "$1" latency)"
}
row sink "smtp-source -> smtp-sink"
row postfix "Postfix null client"
row smarthostd "smarthostd (TCP)"
row unix "smarthostd (Unix socket)"
row postfix-tls "Postfix, STARTTLS upstream"
row smarthostd-tls "smarthostd, STARTTLS upst."
echo
if [ -n "$have_postfix" ]; then
	echo "STARTTLS upstream, TLS connections it counted per phase of" \
	    "$msgs messages (medians):"
	echo "  Postfix c=1 $(v postfix-tls conns1), c=20" \
	    "$(v postfix-tls conns20)"
	echo "  smarthostd c=1 $(v smarthostd-tls conns1)" \
	    "($(v smarthostd-tls resumed1) resumed), c=20" \
	    "$(v smarthostd-tls conns20) ($(v smarthostd-tls resumed20) resumed)"
fi
echo "upstream connections per phase of $msgs messages (medians):"
echo "  smarthostd (TCP) c=1 $(v smarthostd upconns1), c=20" \
    "$(v smarthostd upconns20); (Unix socket) c=1 $(v unix upconns1)," \
    "c=20 $(v unix upconns20); STARTTLS upstream c=1" \
    "$(v smarthostd-tls upconns1), c=20 $(v smarthostd-tls upconns20)"
echo "a $big_mb MB message: $big_rate MB/s accepted, daemon RSS grew" \
    "$big_growth MiB; cold cat of a $big_mb MB file on the spool's disk:" \
    "$cat_rate MB/s"
echo "disk limits: file + fsync + directory fsync $disk_files/s;" \
    "append-only log, fdatasync per commit $disk_log/s, per 8 commits" \
    "$disk_log8/s; in place, preallocated $disk_prealloc/s, into blocks" \
    "written before $disk_written/s"
echo "one client's bound, 1 / (t_sink + t_fdatasync): appended" \
    "$(bound "$disk_log")/s, preallocated $(bound "$disk_prealloc")/s," \
    "blocks written before $(bound "$disk_written")/s"
echo

s1=$(v smarthostd accept1)
s20=$(v smarthostd accept20)
p1=$(v postfix accept1)
p20=$(v postfix accept20)
echo "ratios (medians of this run):"
target "accept c=1 vs Postfix" "$(ratio "$s1" "$p1")" ">=" 5
target "accept c=1 vs smtp-source -> smtp-sink" \
    "$(ratio "$s1" "$(v sink accept1)")" ">=" 0.6
target "accept c=20 vs Postfix" "$(ratio "$s20" "$p20")" ">=" 8
target "accept c=20 vs smtp-source -> smtp-sink" \
    "$(ratio "$s20" "$(v sink accept20)")" ">=" 0.8
echo "  accept c=20, run by run: vs Postfix $(per_run smarthostd accept20 \
    postfix accept20); vs smtp-source -> smtp-sink $(per_run smarthostd \
    accept20 sink accept20); smtp-source -> smtp-sink itself vs Postfix" \
    "$(per_run sink accept20 postfix accept20)"
target "end to end c=20 vs Postfix" \
    "$(ratio "$(v smarthostd e2e20)" "$(v postfix e2e20)")" ">=" 8
target "CPU/msg c=1 vs Postfix" \
    "$(ratio "$(v smarthostd cpu1)" "$(v postfix cpu1)" %.3f)" "<=" 0.1
target "CPU/msg c=20 vs Postfix" \
    "$(ratio "$(v smarthostd cpu20)" "$(v postfix cpu20)" %.3f)" "<=" 0.1
target "peak PSS vs Postfix" "$(ratio "$(v smarthostd pss20)" \
    "$(v postfix pss20)" %.3f)" "<=" 0.05
target "Unix socket vs TCP, accept c=1" \
    "$(ratio "$(v unix accept1)" "$s1")" ">=" 1
target "Unix socket vs TCP, accept c=20" \
    "$(ratio "$(v unix accept20)" "$s20")" ">=" 1
target "STARTTLS upstream: e2e c=20 vs Postfix" \
    "$(ratio "$(v smarthostd-tls e2e20)" "$(v postfix-tls e2e20)")" ">=" 8
echo "  STARTTLS upstream: accept c=1 vs Postfix" \
    "$(ratio "$(v smarthostd-tls accept1)" "$(v postfix-tls accept1)")," \
    "CPU/msg c=1 vs Postfix" \
    "$(ratio "$(v smarthostd-tls cpu1)" "$(v postfix-tls cpu1)" %.3f)"
target "50 MB message: RSS growth MiB" "$big_growth" "<=" 1
echo "  accept c=1 vs the disk's file + fsync + dir fsync limit:" \
    "$(ratio "$s1" "$disk_files")"
echo "  accept c=1 vs the disk's log + fdatasync limit:" \
    "$(ratio "$s1" "$disk_log")"
b1=$(bound "$disk_written")
echo "  one client's bound (blocks written before) vs Postfix:" \
    "$(ratio "$b1" "$p1"), vs smtp-source -> smtp-sink:" \
    "$(ratio "$b1" "$(v sink accept1)"); accept c=1 vs that bound:" \
    "$(ratio "$s1" "$b1")"
echo

# reach VALUE LIMIT: whether a bound leaves room for a target.
reach() {
	awk -v v="$1" -v l="$2" 'BEGIN {
		if (v == "-") print "not measured"
		else if (v + 0 >= l + 0) print "reachable on this machine"
		else print "out of reach on this machine"
	}'
}
echo "what this machine's $cores cores allow at c=20 (CPU ms per message," \
    "medians; bounds: medians of each run's):"
printf '  %-28s %11s %10s %10s %10s\n' "" smtp-source smtp-sink relay \
    upstream
cpurow() {
	printf '  %-28s %11s %10s %10s %10s\n' "$2" "$(v "$1" srccpu20)" \
	    "$(v "$1" sinkcpu20)" "$(v "$1" cpu20)" "$(v "$1" upcpu20)"
}
cpurow sink "smtp-source -> smtp-sink"
cpurow smarthostd "smarthostd (TCP)"
cpurow postfix-tls "Postfix, STARTTLS upstream"
cpurow smarthostd-tls "smarthostd, STARTTLS upst."
echo "  cores used: smtp-source -> smtp-sink $(v bound cores20) of $cores;" \
    "smarthostd (TCP), source + daemon + sink until the last delivery," \
    "$(v bound smdcores20) of $cores"
ceil20=$(v bound ceil20)
echo "  c=20 ceiling for any relay on this machine: $ceil20 % of" \
    "smtp-source -> smtp-sink (a relay costing what smtp-sink costs);" \
    "measured: $(calc %.1f "100 * a / b" a="$s20" b="$(v sink accept20)") %" \
    "(target 80 %: $(reach "$ceil20" 80))"
echo "  daemon CPU/msg needed for 80 %: $(v bound need20) ms (smtp-source" \
    "spent $(v bound srcextra20) ms more per message than against" \
    "smtp-sink); measured: $(v smarthostd cpu20) ms"
tlsx20=$(v bound tlsx20)
echo "  STARTTLS upstream, e2e c=20 the cores allow with a relay that costs" \
    "nothing: $(v bound tlsrate20)/s = ${tlsx20}x Postfix through it" \
    "(target 8x: $(reach "$tlsx20" 8)); measured: $(ratio \
    "$(v smarthostd-tls e2e20)" "$(v postfix-tls e2e20)")x"
echo
echo "every run (case metric: values in run order):"
awk '{
	k = $1 " " $2
	if (!(k in v))
		order[++n] = k
	v[k] = v[k] " " $3
} END {
	for (i = 1; i <= n; i++)
		print "  " order[i] ":" v[order[i]]
}' "$results"
