#!/bin/sh
# The reliability suite: tests/reliability/test_*.py against the built
# daemon. RELIABILITY_SCALE=long (make check-reliability) runs the long
# versions and then fuzzes every target (tests/fuzz/run.sh) for
# FUZZ_CPU_SECONDS of CPU time each (default 1800: 30 CPU-minutes), with
# FUZZ_JOBS processes (default 2); otherwise (make check) the short
# versions. Figures go to reliability-figures.log.
: "${SMARTHOSTD:?SMARTHOSTD must name the smarthostd binary}"
TOP_SRCDIR=${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
TOP_BUILDDIR=${TOP_BUILDDIR:-$(pwd)}
RELIABILITY_FIGURES=${RELIABILITY_FIGURES:-$TOP_BUILDDIR/reliability-figures.log}
export SMARTHOSTD TOP_SRCDIR TOP_BUILDDIR RELIABILITY_FIGURES
export PYTHONDONTWRITEBYTECODE=1
if [ "${RELIABILITY_SCALE:-short}" = long ]; then
	limit=14400
else
	limit=900
fi
# A base directory of this run's own (see tests/e2e/run-e2e.sh).
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/smarthostd-rel.XXXXXX") || exit 1
status=0
timeout --kill-after=30 "$limit" /usr/bin/python3 -m pytest -v -ra -s \
    -p no:cacheprovider --basetemp="$basetemp/t" \
    "$TOP_SRCDIR/tests/reliability" || status=$?
rm -rf "$basetemp"
if [ "${RELIABILITY_SCALE:-short}" = long ]; then
	FUZZ_CPU_SECONDS=${FUZZ_CPU_SECONDS:-1800} FUZZ_JOBS=${FUZZ_JOBS:-2} \
	    sh "$TOP_SRCDIR/tests/fuzz/run.sh" || status=$?
fi
exit $status
