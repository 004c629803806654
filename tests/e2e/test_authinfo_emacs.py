"""The differential test of the authinfo reader: for every lookup in
tests/unit/authinfo/cases.tsv, `smarthostctl credentials` and Emacs 28's
own auth-source-search (through the corpus's emacs-lookup.el, as
verify-emacs.sh runs it) must give the same login and password.

The exceptions are the deliberate differences, documented in authinfo(5)
("DIFFERENCES FROM EMACS"): the rows whose emacs column is not "=". For
those, our answer must be the one cases.tsv expects and Emacs's the one
its emacs column records. Each is its own test_documented_difference[...]
case, named after the difference, so the test output lists them. (A row
of a file with a difference may still get the same answer from both,
e.g. host-keyword.authinfo's b.example, whose merged entry ends with b's
values.)

Emacs runs once for all lookups (emacs --batch starts in about half a
second; loading emacs-lookup.el once per lookup in one process asks
auth-source exactly as separate runs do, since it disables the cache).

gpg-token.authinfo holds Emacs auth-source gpg: tokens encrypted to the
corpus's test key (gpg-token-key.asc, no passphrase): both Emacs and
smarthostctl run with a GNUPGHOME that holds it, and must decrypt them.
Output is read as bytes: values may hold carriage returns
(cr-in-quotes.authinfo), which text mode would turn into line ends.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

EMACS = shutil.which("emacs")
EX_NOUSER = 67


def corpus_dir():
    top = os.environ.get("TOP_SRCDIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    return os.path.join(top, "tests", "unit", "authinfo")


# Which entry of authinfo(5) "DIFFERENCES FROM EMACS" each corpus file's
# differences come under (the names appear in the test ids).
DIFFERENCES = {
    "host-keyword.authinfo": "host-starts-an-entry",
    "capitals.authinfo": "keywords-ignore-case",
    "backslash-quote.authinfo": "escapes-in-double-quotes",
    "hash-value.authinfo": "value-starting-with-hash",
    "outside.authinfo": "keys-before-first-machine",
    "malformed.authinfo": "malformed-lines",
    "macdef.netrc": "macdef-body-skipped",
    "host-case.authinfo": "host-names-ignore-case",
    "ports.authinfo": "ports-by-number-and-name",
    "aliases.authinfo": "ports-by-number-and-name",
    "cr-in-quotes.authinfo": "carriage-return-in-a-password",
}


@dataclass(frozen=True)
class Case:
    file: str
    host: str
    port: str      # "-" = any port
    user: str      # "*" = any user
    line: int      # 0 = no match
    login: str     # "-" = absent, '""' = empty
    password: str
    emacs: str     # "=", "none", "error" or "found LOGIN SECRET"

    @property
    def id(self):
        name = f"{self.file}:{self.host}:{self.port}:{self.user}"
        if self.emacs != "=":
            name += f"--{DIFFERENCES.get(self.file, 'undocumented')}"
        return name

    @property
    def key(self):
        return (self.file, self.host, self.port, self.user)


def read_cases():
    cases = []
    with open(os.path.join(corpus_dir(), "cases.tsv"),
              encoding="utf-8", newline="") as f:
        for number, text in enumerate(f, 1):
            text = text.rstrip("\n")
            if not text or text.startswith("#"):
                continue
            fields = text.split("\t")
            assert len(fields) == 8, f"cases.tsv:{number}: {text!r}"
            cases.append(Case(*fields[:4], int(fields[4]), *fields[5:]))
    return cases


CASES = read_cases()
SAME = [c for c in CASES if c.emacs == "="]
DIFFERENT = [c for c in CASES if c.emacs != "="]


def tsv_value(value):
    """A login or password of cases.tsv: "-" absent, '""' empty, and \\r
    stands for a carriage return."""
    if value == "-":
        return None
    return "" if value == '""' else value.replace("\\r", "\r")


def expected_ours(case):
    """What cases.tsv says we answer: ("none",) or ("found", line,
    login, password), None for an absent field."""
    if case.line == 0:
        return ("none",)
    return ("found", case.line, tsv_value(case.login),
            tsv_value(case.password))


# --------------------------------------------------------------------------
# Emacs's answers

def parse_lisp_values(text):
    """The values of "nil" and Lisp string literals (as prin1 writes
    them) separated by blanks: a list of str or None."""
    values, i = [], 0
    while i < len(text):
        if text[i] == " ":
            i += 1
        elif text.startswith("nil", i):
            values.append(None)
            i += 3
        elif text[i] == '"':
            out, i = bytearray(), i + 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                    octal = re.match(r"[0-7]{1,3}", text[i:])
                    if octal:
                        out.append(int(octal.group(0), 8))
                        i += len(octal.group(0))
                        continue
                    out += {"n": b"\n", "t": b"\t"}.get(
                        text[i], text[i].encode())
                else:
                    out += text[i].encode()
                i += 1
            values.append(out.decode("utf-8", "replace"))
            i += 1
        else:
            raise ValueError(f"cannot read Lisp values in {text!r}")
    return values


def emacs_answer(text):
    """Emacs's line as ("none",), ("error",) or ("found", login, secret)."""
    if text == "none":
        return ("none",)
    if text.startswith("error"):
        return ("error",)
    assert text.startswith("found "), f"unexpected Emacs answer {text!r}"
    login, secret = parse_lisp_values(text[len("found "):])
    return ("found", login, secret)


def lisp_string(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus copied to a private directory with mode 0600 (smarthostd
    refuses files others can read) and one smarthostctl config per file
    naming it as the only credential file: file name -> (path, config)."""
    directory = tmp_path_factory.mktemp("corpus")
    out = {}
    for name in sorted({c.file for c in CASES}):
        path = str(directory / name)
        shutil.copyfile(os.path.join(corpus_dir(), name), path)
        os.chmod(path, 0o600)
        config = str(directory / (name + ".conf"))
        with open(config, "w", encoding="utf-8") as f:
            f.write(f'spool = "{directory}/spool";\n'
                    f'authinfo = [ "{path}" ];\n'
                    f'relays = {{ capture = {{ type = "maildir"; '
                    f'path = "{directory}/maildir"; }}; }};\n')
        out[name] = (path, config)
    return out


@pytest.fixture(scope="module")
def gnupg_env(tmp_path_factory):
    """The environment for Emacs and smarthostctl: GNUPGHOME with the
    corpus's token key imported. Its gpg-agent is stopped afterwards."""
    home = tmp_path_factory.mktemp("gnupg")
    os.chmod(home, 0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    run = subprocess.run(["gpg", "--batch", "--quiet", "--import",
                          os.path.join(corpus_dir(), "gpg-token-key.asc")],
                         env=env, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    yield env
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def emacs_answers(corpus, gnupg_env):
    """Every case's answer from Emacs: key -> the line emacs-lookup.el
    printed."""
    if EMACS is None:
        pytest.skip("emacs is not installed (Debian's emacs-nox, which "
                    "tests/bootstrap.sh installs): cannot compare with "
                    "Emacs 28's auth-source")
    script = os.path.join(corpus_dir(), "emacs-lookup.el")
    calls = " ".join(
        "(" + " ".join(lisp_string(v) for v in
                       (corpus[c.file][0], c.host, c.port, c.user)) + ")"
        for c in CASES)
    program = f"""
(dolist (args '({calls}))
  (princ "@@begin\\n")
  (setq command-line-args-left args)
  (condition-case err
      (load {lisp_string(script)} nil t)
    (error (princ (format "error %S\\n" (error-message-string err)))))
  (princ "@@end\\n"))
"""
    version = subprocess.run([EMACS, "--batch", "-Q", "--eval",
                              "(princ emacs-major-version)"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "28", \
        f"the corpus records Emacs 28's answers; this is Emacs " \
        f"{version.stdout.strip()!r}"
    run = subprocess.run([EMACS, "--batch", "-Q", "--eval", program],
                         capture_output=True, timeout=120, env=gnupg_env,
                         cwd=str(os.path.dirname(corpus[CASES[0].file][0])))
    stdout = run.stdout.decode("utf-8", "replace")
    stderr = run.stderr.decode("utf-8", "replace")
    assert run.returncode == 0, stderr[-2000:]
    blocks = re.findall(r"@@begin\n(.*?)@@end\n", stdout, re.S)
    assert len(blocks) == len(CASES), \
        f"{len(blocks)} answers from Emacs for {len(CASES)} lookups:\n" \
        f"{stdout[-2000:]}\n{stderr[-2000:]}"
    # only the line end princ adds: a value may end in a carriage return
    return {c.key: block.rstrip("\n") for c, block in zip(CASES, blocks)}


# --------------------------------------------------------------------------
# Our answers

def our_answer(ctl, corpus, env, case):
    """`smarthostctl credentials HOST PORT [USER] --show-secret` as
    ("none",) or ("found", line, login, password)."""
    path, config = corpus[case.file]
    args = [ctl, "-c", config, "credentials", case.host, case.port]
    if case.user != "*":
        args.append(case.user)
    run = subprocess.run(args + ["--show-secret"], capture_output=True,
                         timeout=30, env=env)
    stdout = run.stdout.decode("utf-8", "replace")
    if run.returncode == EX_NOUSER:
        assert stdout == "", stdout
        return ("none",)
    assert run.returncode == 0, \
        f"smarthostctl credentials exited {run.returncode}: " \
        f"{run.stderr.decode('utf-8', 'replace')}"
    fields = {}
    for text in stdout.split("\n")[:-1]:
        key, sep, value = text.partition(": ")
        assert sep, f"not a key: value line: {text!r}"
        fields[key] = value
    assert fields["file"] == path
    if fields.get("password") == "missing":
        password = None
    else:
        password = fields["secret"]
        assert fields["password"] == password
    assert fields.get("user") == fields.get("login")
    return ("found", int(fields["line"]), fields.get("login"), password)


def without_line(answer):
    return answer if answer[0] == "none" else ("found",) + answer[2:]


def unaskable(case):
    """Why smarthostctl credentials cannot ask this lookup, or None: it
    always takes a port, and only a number or smtp, submission,
    submissions (the ports a relay can have); "-" (any port) and names
    like imap are the unit test's alone (tests/unit/test_authinfo)."""
    if case.port == "-":
        return "port \"-\" (any port) cannot be asked through " \
            "smarthostctl credentials"
    if not re.fullmatch(r"[0-9]+|smtp|submissions?|smtps|ssmtp",
                        case.port, re.I):
        return f"port \"{case.port}\" is not a port smarthostctl " \
            f"credentials takes (nor one a relay can have)"
    return None


# --------------------------------------------------------------------------
# The tests

@pytest.mark.parametrize("case", SAME, ids=[c.id for c in SAME])
def test_same_as_emacs(ctl, corpus, gnupg_env, emacs_answers, case):
    emacs = emacs_answer(emacs_answers[case.key])
    if unaskable(case):
        # Emacs's side of the claim is still checked.
        assert emacs == without_line(expected_ours(case)), \
            f"Emacs 28 answers {emacs_answers[case.key]!r}; cases.tsv " \
            f"expects {expected_ours(case)}"
        # Our side of this row is asserted by tests/unit/test_authinfo
        # (every_case_in_cases_tsv) against the same expected answer.
        return
    ours = our_answer(ctl, corpus, gnupg_env, case)
    assert ours == expected_ours(case), \
        f"smarthostctl answers {ours}, cases.tsv expects " \
        f"{expected_ours(case)}"
    assert emacs == without_line(ours), \
        f"Emacs 28 answers {emacs_answers[case.key]!r}, smarthostctl " \
        f"{ours} (not a documented difference)"


@pytest.mark.parametrize("case", DIFFERENT, ids=[c.id for c in DIFFERENT])
def test_documented_difference(ctl, corpus, gnupg_env, emacs_answers,
                               case):
    assert case.file in DIFFERENCES, \
        f"{case.file}: a difference from Emacs that this test cannot " \
        f"name; add it to DIFFERENCES (and to authinfo(5))"
    emacs_text = emacs_answers[case.key]
    emacs = emacs_answer(emacs_text)
    want_emacs = emacs_answer(case.emacs)
    assert emacs == want_emacs, \
        f"Emacs 28 answers {emacs_text!r}; cases.tsv records {case.emacs!r}"
    if unaskable(case):
        # As above: our side is the unit test's, through cases.tsv.
        return
    ours = our_answer(ctl, corpus, gnupg_env, case)
    assert ours == expected_ours(case), \
        f"smarthostctl answers {ours}, cases.tsv expects " \
        f"{expected_ours(case)}"


def test_corpus_has_differences_and_agreements():
    """The corpus still covers both kinds, and every documented
    difference of authinfo(5) that DIFFERENCES names has a case."""
    assert len(SAME) >= 40 and len(DIFFERENT) >= 10, (len(SAME),
                                                      len(DIFFERENT))
    assert set(DIFFERENCES) == {c.file for c in DIFFERENT}
