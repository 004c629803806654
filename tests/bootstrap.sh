#!/bin/sh
# Bootstraps a checkout on Debian 12: installs what is missing, builds in
# build/ under the checkout, then
#   run    starts the daemon in the foreground on etc/quickstart.conf
#   check  runs the unit and end-to-end tests (what CI runs)
#   bench  runs the throughput benchmark against Postfix's smtp-source/sink
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
packages="build-essential autoconf automake autoconf-archive libtool
	pkg-config libevent-dev libssl-dev libconfig-dev libsystemd-dev
	libcriterion-dev swaks msmtp python3-aiosmtpd python3-pytest openssl
	ca-certificates emacs-nox gnupg systemd postfix bsd-mailx git
	git-email libmailtools-perl"

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

if [ "$mode" = bench ] && [ -x /usr/sbin/postfix ] &&
    /usr/sbin/postfix status >/dev/null 2>&1; then
	echo "bootstrap: stopping the system's Postfix"
	/usr/sbin/postfix stop
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
if [ -f config.status ]; then
	build=$top
else
	build=$top/build
	mkdir -p "$build"
fi
cd "$build"
if [ ! -f Makefile ] || newer "$top/configure" config.status; then
	"$top/configure" --enable-werror
fi
make -j2

case $mode in
run)
	exec make run
	;;
bench)
	exec make bench
	;;
check)
	# The harness keeps each test's output in its own .log and copies
	# those of the tests that failed into test-suite.log; remove a stale
	# one so that a build failure does not show old results.
	rm -f test-suite.log
	status=0
	make -j2 check || status=$?
	if [ "$status" -ne 0 ]; then
		if [ -f test-suite.log ]; then
			echo "==================== $build/test-suite.log"
			cat test-suite.log
		fi
		exit "$status"
	fi
	# Show what the end-to-end suite ran, not only that it passed.
	e2e=tests/e2e/run-e2e.sh.log
	if [ -f "$e2e" ]; then
		echo "==================== $build/$e2e"
		cat "$e2e"
	fi
	;;
esac
