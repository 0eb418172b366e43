""".ci/setup fails loudly: a step that fails stops it with a non-zero exit
status and a `setup: ...` line naming the step, after the tool's own reason.

Runs the real script from the clone (it cds there itself) with
DOCTEUR_VENV in a temporary folder, so the project's .venv is never
touched. pip is made to fail by pointing it at a closed port with every
configuration file ignored (this machine's pip.conf files add local indexes
and find-links); apt by asking for a package that does not exist. The
other Debian packages are already installed when the tests run (.ci/run
runs setup first), so the apt step sees only the missing one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.support import REPO_ROOT

SETUP = REPO_ROOT / ".ci" / "setup"
CLOSED_INDEX = "http://127.0.0.1:9/simple"  # the discard port: nothing listens


def run_setup(**overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "DOCTEUR_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(overrides)
    return subprocess.run(["bash", str(SETUP)], cwd="/", env=env, capture_output=True,
                          text=True, timeout=600)


def project_venv_still_works() -> None:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    if not python.exists():  # a run without the project's .venv: nothing to break
        return
    done = subprocess.run([str(python), "-c", "import docteur_core; print(docteur_core.__file__)"],
                          cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(REPO_ROOT)


@pytest.mark.slow  # builds a venv (pip)
def test_a_failing_pip_install_stops_setup_with_its_reason(tmp_path):
    venv = tmp_path / "venv"
    done = run_setup(DOCTEUR_VENV=str(venv),
                     PIP_CONFIG_FILE=os.devnull,  # no /etc/pip.conf, ~/.config/pip/pip.conf...
                     PIP_INDEX_URL=CLOSED_INDEX, PIP_EXTRA_INDEX_URL="", PIP_FIND_LINKS="",
                     PIP_NO_CACHE_DIR="1", PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="10",
                     PIP_DISABLE_PIP_VERSION_CHECK="1")
    assert done.returncode != 0, done.stderr
    # setup got as far as pip: it made the environment it was given.
    assert (venv / "bin" / "python").exists(), done.stderr
    # pip looked only where it was told (the machine's indexes are off)...
    assert f"Looking in indexes: {CLOSED_INDEX}" in done.stderr, done.stderr
    assert "/opt/" not in done.stderr, done.stderr
    # ... said why it failed (setuptools>=77 to build docteur cannot be had),
    assert "No matching distribution found for setuptools" in done.stderr, done.stderr
    # and setup's last words name the step and the environment.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("setup: pip install") and str(venv) in last and "failed" in last, \
        done.stderr
    # No `docteur` was installed there, and the project's own is intact.
    assert not (venv / "bin" / "docteur").exists()
    project_venv_still_works()


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_a_missing_debian_package_stops_setup_with_its_name(tmp_path):
    venv = tmp_path / "venv"
    package = "no-such-package-docteur"
    done = run_setup(DOCTEUR_VENV=str(venv), DOCTEUR_EXTRA_PACKAGES=package)
    assert done.returncode != 0, done.stderr
    assert f"setup: installing {package}" in done.stderr, done.stderr
    assert f"Unable to locate package {package}" in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("setup: apt-get install") and package in last and "failed" in last, \
        done.stderr
    # It stopped there: no virtual environment, nothing installed.
    assert not venv.exists()
    project_venv_still_works()
