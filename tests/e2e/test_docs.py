"""The documents that must stay true to the code: doc/ARCHITECTURE.md's
module map names every source file and no other, and each program's man
page names every option, variable and command its --help lists."""

import os
import re
import subprocess

import pytest

TOP_SRCDIR = os.environ.get(
    "TOP_SRCDIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROGRAMS = ["smarthostd", "smarthostctl", "smarthost-sendmail",
            "smarthost-postdrop"]


def read(*path):
    with open(os.path.join(TOP_SRCDIR, *path), encoding="utf-8") as f:
        return f.read()


def test_module_map_names_every_source_file():
    text = read("doc", "ARCHITECTURE.md")
    start = text.index("\n## Module map\n")
    end = text.index("\n### ", start)
    named = set()
    for line in text[start:end].splitlines():
        if line.startswith("| "):
            named.update(re.findall(r"\b([a-z_]+\.c)\b",
                                    line.split("|")[1]))
    sources = {f for f in os.listdir(os.path.join(TOP_SRCDIR, "src"))
               if f.endswith(".c")}
    assert sorted(sources - named) == [], "not in the module map"
    assert sorted(named - sources) == [], "in the module map, not in src/"


def man_text(name):
    """The man page's source with roff's escaped hyphens made plain."""
    return read("doc", f"{name}.8").replace("\\-", "-")


def help_text(name):
    binary = os.path.join(os.path.dirname(os.environ["SMARTHOSTD"]), name)
    done = subprocess.run([binary, "--help"], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", PROGRAMS)
def test_man_page_names_what_help_lists(name):
    usage, page = help_text(name), man_text(name)
    words = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage))
    words |= set(re.findall(r"\bSMARTHOSTD_[A-Z_]+", usage))
    if name == "smarthostctl":
        commands = usage.split("\ncommands:\n", 1)[1]
        words |= set(re.findall(r"^  ([a-z][a-z-]+)", commands, re.M))
        words |= set(re.findall(r"\| ([a-z][a-z-]+)", commands))
    assert len(words) >= 2, usage
    missing = sorted(w for w in words
                     if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])",
                                      page))
    assert missing == [], f"in {name} --help, not in {name}.8"
