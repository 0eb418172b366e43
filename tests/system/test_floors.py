"""The dependency floors pyproject.toml declares are true.

`.ci/floors` installs exactly the lowest version each `>=` allows (dulwich,
zopfli, mfusepy, pytest, hypothesis) into a virtual environment of its own
and runs the tests that use them there. `dulwich>=0.22` was declared while
the code imported `dulwich.wildmatch` (1.2.13) and needed 1.2.20's ssh
errors: every `docteur make` failed with a ModuleNotFoundError on the
versions it allowed. About a minute and a half the first time (the
environment is kept in .venv-floors/ for the next run); `-m "not floors"`
leaves it out of a quick local run.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.support import REPO_ROOT

pytestmark = [pytest.mark.slow]


@pytest.mark.floors
def test_the_declared_floors_pass_the_build_and_reader_tests(tmp_path):
    # A base folder of its own: the inner pytest must not number, lock or
    # clean up its temporary folders beside this run's.
    proc = subprocess.run(["bash", str(REPO_ROOT / ".ci/floors"), f"--basetemp={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=1200)
    said = [line for line in (proc.stdout + proc.stderr).splitlines()
            if not line.startswith("WARNING: Location ")]
    assert proc.returncode == 0, "\n".join(said[-40:])
    summary = proc.stdout.splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
