"""Fixtures of the reliability suite (tests/reliability): the end-to-end
suite's harness and PKI, plus the scale of the run.

RELIABILITY_SCALE=long (make check-reliability) runs each test at the
size doc/RELIABILITY.md reports; anything else (make check) runs the short
version. Each test records its figures with the `figures` fixture: they
are printed and appended, one JSON object a line, to RELIABILITY_FIGURES
(default: reliability-figures.log in the current directory).
"""

import importlib.util
import json
import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(HERE, "..", "e2e")
sys.path.insert(0, E2E)


def _e2e_fixtures():
    spec = importlib.util.spec_from_file_location(
        "e2e_conftest", os.path.join(E2E, "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The end-to-end suite's fixtures (pki, smarthostd_binary, upstream and
# daemon factories, logs of failed tests) serve here unchanged.
_e2e = _e2e_fixtures()
pki = _e2e.pki
smarthostd_binary = _e2e.smarthostd_binary
upstream_factory = _e2e.upstream_factory
upstream = _e2e.upstream
daemon = _e2e.daemon
daemon_factory = _e2e.daemon_factory
pytest_runtest_makereport = _e2e.pytest_runtest_makereport

LONG = os.environ.get("RELIABILITY_SCALE") == "long"


def scale(short, long):
    """short under make check, long under make check-reliability."""
    return long if LONG else short


@pytest.fixture
def figures(request):
    """figures(**numbers): records a test's figures."""
    path = os.environ.get("RELIABILITY_FIGURES",
                          "reliability-figures.log")

    def record(**numbers):
        entry = {"test": request.node.name,
                 "scale": "long" if LONG else "short",
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 **numbers}
        line = json.dumps(entry, sort_keys=True)
        print(f"FIGURES {line}")
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return record
