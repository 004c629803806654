#!/bin/sh
# Bootstraps a checkout on Debian 12: installs what is missing, builds in
# build/ under the checkout, then
#   run    starts the daemon in the foreground on etc/quickstart.conf
#   check  runs the unit, end-to-end and short reliability tests (what CI
#          runs), on the normal build and on a sanitizer build in
#          build-asan/, GCC's static analyzer, then every fuzz target
#          for 60 s
#   bench  runs the throughput benchmark beside a Postfix instance of its
#          own (never the system's Postfix), with smtp-source and smtp-sink
# Installing needs root; everything else does not. Safe to run again: it
# installs, regenerates and reconfigures only what is missing or stale.
set -eu

usage() {
	echo "usage: $0 run|check|bench" >&2
	exit 64
}

[ $# -eq 1 ] || usage
mode=$1
case $mode in
run|check|bench) ;;
*) usage ;;
esac

cd "$(dirname "$0")/.."
top=$(pwd)

# emacs-nox: Emacs 28's auth-source for the differential test of the
# authinfo reader (tests/e2e/test_authinfo_emacs.py). gnupg: .authinfo.gpg
# decryption (tests/unit/test_scheduler). systemd: systemd-socket-activate
# (tests/e2e/test_daemon.py); it is only installed, never started. msmtp:
# a real client of the daemon (tests/e2e/test_delivery.py). bsd-mailx,
# git, git-email and libmailtools-perl (which git send-email needs): real
# callers of smarthost-sendmail (tests/e2e/test_sendmail.py). bsd-mailx
# depends on an MTA: Postfix, installed with it, satisfies that (instead of
# exim4) and is never started by the tests (see policy-rc.d below).
# clang: the fuzz targets (tests/fuzz/run.sh). strace: the power-cut
# states (tests/reliability/test_crash_states.py). faketime: an expired
# certificate (tests/reliability/test_upstream_faults.py). iproute2:
# addresses in a network namespace (tests/reliability/test_security.py).
# python3-yaml: the compose and Kubernetes examples of doc/container.md
# (tests/e2e/test_homes.py). gdb: holds the daemon's event loop in a
# sleep to show that the watchdog pings stop (tests/e2e/test_homes.py).
# valgrind: make check-valgrind and make bench-callgrind.
packages="build-essential autoconf automake autoconf-archive libtool
	pkg-config libevent-dev libssl-dev libconfig-dev libsystemd-dev
	libcriterion-dev swaks msmtp python3-aiosmtpd python3-pytest openssl
	ca-certificates emacs-nox gnupg systemd postfix bsd-mailx git
	git-email libmailtools-perl clang strace faketime iproute2
	python3-prometheus-client python3-yaml valgrind gdb"

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null |
	    grep -q 'install ok installed'
}

missing=
for p in $packages; do
	installed "$p" || missing="$missing $p"
done

if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "bootstrap: run as root to install:$missing" >&2
		exit 1
	fi
	echo "bootstrap: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	# Postfix is only a load generator and sink here, and bsd-mailx's
	# MTA: keep its service from starting while it installs.
	policy=/usr/sbin/policy-rc.d
	own_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		own_policy=yes
	fi
	apt-get update -q
	status=0
	# shellcheck disable=SC2086 # a list of package names
	# No recommends: emacs-nox would otherwise pull in an MTA (exim4)
	# that starts on port 25 at the next boot.
	apt-get install -y -q --no-install-recommends $missing || status=$?
	[ -z "$own_policy" ] || rm -f "$policy"
	[ "$status" -eq 0 ] || exit "$status"
fi

# newer A B: A was modified after B.
newer() {
	[ -n "$(find "$1" -prune -newer "$2")" ]
}

if [ ! -x configure ] || [ ! -f Makefile.in ] || newer configure.ac configure
then
	autoreconf -fi
fi

# Out of tree, so the source stays clean for other VPATH builds and for
# make distcheck. A tree someone configured in place is built in place.
# configure_in DIR ARGS...: configures DIR (made if missing) unless its
# configuration is newer than configure.
configure_in() {
	dir=$1
	shift
	mkdir -p "$dir"
	if [ ! -f "$dir/Makefile" ] || newer "$top/configure" "$dir/config.status"
	then
		(cd "$dir" && "$top/configure" "$@")
	fi
}

# check_in DIR: runs make check in DIR and shows what the end-to-end
# suite ran (or, on failure, test-suite.log).
check_in() {
	# The harness keeps each test's output in its own .log and copies
	# those of the tests that failed into test-suite.log; remove a stale
	# one so that a build failure does not show old results.
	rm -f "$1/test-suite.log"
	status=0
	start=$(date +%s)
	make -C "$1" -j2 check || status=$?
	echo "bootstrap: make check in $1: $(($(date +%s) - start)) s"
	if [ "$status" -ne 0 ]; then
		if [ -f "$1/test-suite.log" ]; then
			echo "==================== $1/test-suite.log"
			cat "$1/test-suite.log"
		fi
		exit "$status"
	fi
	# Show what the end-to-end suite ran, not only that it passed.
	e2e=$1/tests/e2e/run-e2e.sh.log
	if [ -f "$e2e" ]; then
		echo "==================== $e2e"
		cat "$e2e"
	fi
	# A skipped Criterion test still lets its program PASS: list every
	# skip, and fail, since a skip here means a check that did not run
	# (SMARTHOSTD_ALLOW_SKIPS=1 accepts them, e.g. without root).
	skips=$(grep -h '^\[SKIP\]' "$1"/tests/unit/*.log 2>/dev/null || true)
	echo "==================== $1: skipped unit tests"
	if [ -z "$skips" ]; then
		echo "none"
	else
		printf '%s\n' "$skips"
		if [ "${SMARTHOSTD_ALLOW_SKIPS:-}" != 1 ]; then
			echo "bootstrap: unit tests were skipped" >&2
			exit 1
		fi
	fi
}

if [ -f config.status ]; then
	build=$top
	if newer configure config.status; then
		./configure --enable-werror
	fi
else
	build=$top/build
	configure_in "$build" --enable-werror
fi
make -C "$build" -j2

case $mode in
run)
	cd "$build"
	exec make run
	;;
bench)
	cd "$build"
	exec make bench
	;;
check)
	check_in "$build"
	# GCC's static analyzer over every source: about 30 s of CPU.
	start=$(date +%s)
	make -C "$build" check-analyzer
	echo "bootstrap: make check-analyzer: $(($(date +%s) - start)) s"
	# The same suite again on a build with AddressSanitizer, LeakSanitizer
	# and UBSan (configure --enable-sanitizers), in its own directory.
	if [ "$build" = "$top" ]; then
		echo "bootstrap: no sanitizer build: the source tree is" \
		    "configured in place (make distclean to build out of tree)" >&2
		exit 1
	fi
	configure_in "$top/build-asan" --enable-werror --enable-sanitizers
	make -C "$top/build-asan" -j2
	check_in "$top/build-asan"
	# Every fuzz target for FUZZ_SECONDS (60 by default here).
	start=$(date +%s)
	make -C "$build" fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
	echo "bootstrap: make fuzz: $(($(date +%s) - start)) s"
	;;
esac
