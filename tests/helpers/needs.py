"""Markers checked against what a test really starts: a test that runs
nbdkit, nginx, fusermount3, QEMU or Solo5 without the marker that says so
fails, so that `pytest -m "not nbdkit ..."` really leaves those programs
out (tests/conftest.py wires it in).

How: for the session, PATH begins with a folder of one-line shell shims
named like the programs; each appends "<test> <marker>" to a log and execs
the real program (found on the PATH before the shim folder went first), so
the process, its pid, its parent and its arguments are those of the real
one. The test's name comes from PYTEST_CURRENT_TEST, which pytest sets
during each test and which every child inherits, so a program started by a
`docteur serve` the test ran is charged to the test. After each test, the
log lines that name it are read back.

What this cannot see, and why that is acceptable: a program started by its
absolute path or under an environment that drops PATH or
PYTEST_CURRENT_TEST (no test does so for these programs today; grep
`/usr/sbin/nbdkit` and `env=` when adding one), except the OCaml docteur,
which `ocaml_oracle.built()` charges to its caller (`charge`); a FUSE mount as root
(libfuse mounts without fusermount3): tests that mount use the `mounts`
fixture, whose cleanup runs fusermount3, and `check_fixtures` ties that
fixture to the `fuse` marker; a venv or a wheel build (the `slow` marker):
found by grep (`venv`, `pip wheel`), see docs/testing.md.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

# program -> the marker a test that starts it must carry
PROGRAMS = {
    "nbdkit": "nbdkit",
    "nginx": "nginx",
    "fusermount3": "fuse",
    "qemu-system-x86_64": "qemu",
    "solo5-spt": "solo5",
    "solo5-hvt": "solo5",
}

# fixture -> the marker a test that uses it must carry
FIXTURES = {"mounts": "fuse", "oracle": "oracle"}

LOG_VARIABLE = "DOCTEUR_TEST_SPAWN_LOG"

SHIM = """#!/bin/sh
printf '%s\\t%s\\n' "${{PYTEST_CURRENT_TEST:-}}" {marker} >> "${{{log}:-/dev/null}}"
exec {real} "$@"
"""


def charge(marker: str) -> None:
    """Charge the running test with needing `marker`, for a program the shims
    cannot see (the OCaml docteur, run by absolute path: tests/helpers/ocaml_oracle.py)."""
    log = os.environ.get(LOG_VARIABLE)
    if log:
        with open(log, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '')}\t{marker}\n")


class Spawns:
    """The shim folder and its log, for one pytest session."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="docteur-needs-")
        self.folder = Path(self._tmp.name) / "bin"
        self.folder.mkdir()
        self.log = Path(self._tmp.name) / "spawns.log"
        self.log.touch()
        # Tests run some programs as other users (setpriv: tests/mount/test_allow_other.py):
        # the shims must be theirs to run and the log theirs to append to.
        Path(self._tmp.name).chmod(0o755)
        self.folder.chmod(0o755)
        self.log.chmod(0o666)
        self._old_path = os.environ.get("PATH", "")
        # A pytest run by a test (tests/system/test_marker_check.py) finds its
        # parent's shims first: look past them for the real programs.
        search = os.pathsep.join(p for p in self._old_path.split(os.pathsep)
                                 if "docteur-needs-" not in p)
        for program, marker in PROGRAMS.items():
            real = shutil.which(program, path=search) or (
                f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
            if real is None:
                continue  # not installed: the test that needs it fails on its own
            shim = self.folder / program
            shim.write_text(SHIM.format(marker=marker, log=LOG_VARIABLE, real=_quote(real)))
            shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.environ["PATH"] = f"{self.folder}{os.pathsep}{self._old_path}"
        os.environ[LOG_VARIABLE] = str(self.log)
        self._read = 0

    def started_by(self, nodeid: str) -> set[str]:
        """Markers of the programs the test `nodeid` started since the last call.

        Lines are consumed: a test's lines are all written before the next
        test begins (teardown included), except by a daemon that outlives
        its test, which is then charged to whatever it was started by."""
        with open(self.log, "rb") as f:
            f.seek(self._read)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._read += cut
        needed = set()
        for line in data[:cut].decode(errors="replace").splitlines():
            test, _, marker = line.rpartition("\t")
            if test.rsplit(" (", 1)[0] == nodeid:
                needed.add(marker)
        return needed

    def close(self) -> None:
        os.environ["PATH"] = self._old_path
        os.environ.pop(LOG_VARIABLE, None)
        self._tmp.cleanup()


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"



def check_fixtures(item) -> list[str]:
    """Markers the test's fixtures imply and the test lacks."""
    have = {m.name for m in item.iter_markers()}
    return sorted({FIXTURES[f] for f in getattr(item, "fixturenames", ())
                   if f in FIXTURES} - have)
