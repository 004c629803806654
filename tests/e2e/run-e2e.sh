#!/bin/sh
# The end-to-end suite (make check): the built daemon against swaks, smtplib
# and raw-socket clients and an aiosmtpd upstream. Needs Debian's
# python3-pytest, python3-aiosmtpd, swaks and openssl (tests/bootstrap.sh
# installs them). SMARTHOSTD names the daemon; the harness sets it.
: "${SMARTHOSTD:?SMARTHOSTD must name the smarthostd binary}"
TOP_SRCDIR=${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export SMARTHOSTD TOP_SRCDIR
# Leave no __pycache__ in the source tree (make distcheck, read-only srcdir).
export PYTHONDONTWRITEBYTECODE=1
# A base directory of this run's own: under pytest's default,
# /tmp/pytest-of-USER, concurrent runs (two builds, two checkouts) share the
# numbering and remove each other's directories.
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/smarthostd-e2e.XXXXXX") || exit 1
# E2E_TIMEOUT: the whole suite's limit in seconds (make check-valgrind
# raises it).
status=0
timeout --kill-after=30 "${E2E_TIMEOUT:-900}" /usr/bin/python3 -m pytest -v -ra \
    -p no:cacheprovider --basetemp="$basetemp/t" "$TOP_SRCDIR/tests/e2e" ||
    status=$?
rm -rf "$basetemp"
exit $status
