#!/bin/sh
# make fuzz: builds each libFuzzer target with clang (AddressSanitizer and
# UBSan on) and runs it for FUZZ_SECONDS (default 30) from the seeds in
# tests/fuzz/seeds/NAME (and the corpus it grows in the build tree), after
# running the inputs in tests/fuzz/regressions/NAME, if any: a crash the
# fuzzer found goes there (named after what it found) once fixed.
# Needs Debian's clang (apt-get install clang). Never part of make check.
#
# FUZZ_CPU_SECONDS=N instead gives each target N seconds of CPU time
# (make check-reliability: 1800), with FUZZ_JOBS (default 2) processes
# in libFuzzer's fork mode: it fuzzes in rounds of wall time and adds up,
# after each, the CPU time of everything the round ran (user + system, from
# the shell's `times`, which counts every waited-for descendant), until
# the target had its N seconds; it prints that time per target.
set -eu

top=${TOP_SRCDIR:?TOP_SRCDIR must name the source tree}
out=${FUZZ_DIR:-$PWD/fuzz}
seconds=${FUZZ_SECONDS:-30}
cpu_seconds=${FUZZ_CPU_SECONDS:-}
jobs=${FUZZ_JOBS:-2}
cc=${FUZZ_CC:-clang}
command -v "$cc" >/dev/null || { echo "fuzz: $cc missing: apt-get install clang" >&2; exit 1; }
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined -I$top/src"
libs="$(pkg-config --libs openssl libsystemd libevent libevent_openssl \
    libevent_pthreads libconfig) -lpthread"

# target: the sources it needs besides its own file ("library": every
# source of libsmarthost.a)
targets="smtp_server:library
smtp_proto:smtp_proto escape
envelope:envelope strbuf xmalloc log escape
authinfo:authinfo xmalloc log escape
sasl:sasl strbuf xmalloc log escape
aliases:aliases smtp_proto xmalloc log escape
rewrite:rewrite xmalloc log escape
message:message aliases smtp_proto strbuf xmalloc log escape
dropfile:dropfile smtp_proto xmalloc log escape
localsmtp:localsmtp localaddr aliases rewrite smtp_proto strbuf xmalloc log escape
logrec:logrec"

# Sets cpu to the CPU seconds (user + system) this shell's waited-for
# children used so far. `times` must run in this shell: in a command
# substitution it would report a fresh subshell's zeros.
children_cpu() {
	times >"$out/.times"
	cpu=$(sed -n 2p "$out/.times" | tr 'ms' '  ' |
	    awk '{ printf "%d\n", $1 * 60 + $2 + $3 * 60 + $4 }')
}

# fuzz_cpu NAME CORPUS SEEDS: runs fuzz_NAME in rounds until it used
# cpu_seconds of CPU time in all.
fuzz_cpu() {
	children_cpu
	base=$cpu
	used=0
	wall=0
	: >"$out/fuzz_$1.log"
	while [ "$used" -lt "$cpu_seconds" ]; do
		# A round long enough to be cheap, short enough not to
		# overshoot much: the CPU still owed, spread over the jobs.
		round=$(( (cpu_seconds - used) / jobs ))
		[ "$round" -ge 60 ] || round=60
		[ "$round" -le 900 ] || round=900
		start=$(date +%s)
		# shellcheck disable=SC2086
		"$out/fuzz_$1" -fork="$jobs" -max_total_time="$round" \
		    -max_len=8192 "$2" $3 2>>"$out/fuzz_$1.log" ||
		    { echo "fuzz_$1 FAILED: see $out/fuzz_$1.log" >&2;
		      tail -40 "$out/fuzz_$1.log" >&2; return 1; }
		wall=$((wall + $(date +%s) - start))
		children_cpu
		used=$((cpu - base))
	done
	execs=$(grep -o '^#[0-9]*' "$out/fuzz_$1.log" | tr -d '#' |
	    sort -n | tail -1)
	echo "  fuzz_$1: ${used} CPU seconds (user + system) in ${wall} s" \
	    "of wall time, $jobs jobs, ${execs:-0} executions in the last round"
}

mkdir -p "$out"
status=0
# FUZZ_TARGETS: the names to run (default: all of them).
echo "$targets" | while IFS=: read -r name srcs; do
	case " ${FUZZ_TARGETS:-$name} " in
	*" $name "*) ;;
	*) continue ;;
	esac
	files=""
	if [ "$srcs" = library ]; then
		# The .c files of src_libsmarthost_a_SOURCES in Makefile.am.
		for s in $(sed -n '/^src_libsmarthost_a_SOURCES/,/^$/p' \
		    "$top/Makefile.am" | grep -o 'src/[a-z_]*\.c'); do
			files="$files $top/$s"
		done
	else
		for s in $srcs; do
			files="$files $top/src/$s.c"
		done
	fi
	# shellcheck disable=SC2086
	$cc $flags -o "$out/fuzz_$name" "$top/tests/fuzz/fuzz_$name.c" \
	    $files $libs
	# Inputs that once crashed a target: each must now run clean.
	regressions=$top/tests/fuzz/regressions/$name
	if [ -d "$regressions" ]; then
		"$out/fuzz_$name" "$regressions"/* \
		    2>"$out/fuzz_$name.regressions.log" ||
		    { echo "fuzz_$name: a regression input fails: see" \
		      "$out/fuzz_$name.regressions.log" >&2; exit 1; }
	fi
	corpus=$out/corpus-$name
	mkdir -p "$corpus"
	seeds=$top/tests/fuzz/seeds/$name
	[ -d "$seeds" ] || seeds=
	if [ -n "$cpu_seconds" ]; then
		echo "fuzz_$name: ${cpu_seconds} CPU seconds, $jobs jobs"
		fuzz_cpu "$name" "$corpus" "$seeds" || exit 1
		continue
	fi
	echo "fuzz_$name: ${seconds}s"
	# shellcheck disable=SC2086
	"$out/fuzz_$name" -max_total_time="$seconds" -max_len=8192 \
	    -print_final_stats=1 "$corpus" $seeds 2>"$out/fuzz_$name.log" ||
	    { echo "fuzz_$name FAILED: see $out/fuzz_$name.log" >&2;
	      tail -40 "$out/fuzz_$name.log" >&2; exit 1; }
	grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" \
	    "$out/fuzz_$name.log" | sed "s/^/  /"
done || status=$?
exit $status
