"""An `OSError` no verb turned into its own words is still one line:
`docteur VERB: PATH: REASON` (or `standard output: ...`), exit status 1
(`diff`: 2), never a traceback nor Python's "Exception ignored" at exit.

Real processes, real devices: /dev/full for a full standard output (any
user), and for an unwritable destination a folder without write
permission, which root may still write to: root's commands run without
CAP_DAC_OVERRIDE (setpriv, util-linux), so the kernel refuses as it would
refuse a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.make import make_image
from tests.helpers.support import REPO_ROOT
from tests.helpers.gitoracle import SITE

DATE = "2026-01-01T00:00:00Z"
FULL = "No space left on device"


def docteur(*args, stdout=subprocess.PIPE, as_user: bool = False) -> subprocess.CompletedProcess:
    """This checkout's `docteur`; `as_user`: without root's power to write
    anywhere (setpriv drops CAP_DAC_OVERRIDE from the bounding set)."""
    argv = [sys.executable, "-m", "docteur_core", *map(str, args)]
    if as_user and os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("oserrors")
    site, other = base / "site.img", base / "other.img"
    make_image(SITE, site, date=DATE)
    make_image(SITE, other, date="2026-02-02T00:00:00Z")
    big = base / "big"
    big.mkdir()
    (big / "blob").write_bytes(os.urandom(3 << 20))  # more than any buffer: fails mid-write
    make_image(big, base / "big.img", date=DATE)
    return {"site": site, "other": other, "big": base / "big.img", "base": base}


# verb -> arguments ({site}, {other}, {big}, {base} are the fixture's)
TO_STDOUT = {
    "cat": ["{site}", "index.html"],
    "cat (3 MiB)": ["{big}", "blob"],
    "ls": ["{site}"],
    "ls -r -l": ["-r", "-l", "{site}"],
    "ls --json": ["--json", "-r", "{site}"],
    "stat": ["{site}", "index.html"],
    "tree": ["{site}"],
    "info": ["{site}"],
    "verify": ["{site}"],
    "verify --json": ["--json", "{site}"],
    "diff": ["{site}", "{other}"],
    "make": ["--date", DATE, str(SITE), "{base}/made.img"],
    "plugin-path": [],
}


@pytest.mark.parametrize("verb", list(TO_STDOUT))
def test_a_full_standard_output_is_one_line(images, verb):
    args = [a.format(**images) for a in TO_STDOUT[verb]]
    with open("/dev/full", "w") as full:
        proc = docteur(verb.split()[0], *args, stdout=full)
    name = verb.split()[0]
    assert proc.returncode == (2 if name == "diff" else 1), proc.stderr
    assert proc.stderr == f"docteur {name}: standard output: {FULL}\n"


def test_version_to_a_full_device():
    with open("/dev/full", "w") as full:
        proc = docteur("--version", stdout=full)
    assert proc.returncode == 1 and proc.stderr == f"docteur --version: standard output: {FULL}\n"


def test_a_closed_pipe_stays_silent(images):
    """`docteur cat IMG big | head -c 10`: the reader left, nothing to say."""
    argv = [sys.executable, "-m", "docteur_core", "cat", str(images["big"]), "blob"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO_ROOT)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert err == b""


def _one_line(proc: subprocess.CompletedProcess, verb: str, *words: str) -> None:
    assert proc.returncode == 1, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"docteur {verb}: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_extract_into_a_folder_it_may_not_write(images, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = docteur("extract", images["site"], locked / "out", as_user=True)
    _one_line(proc, "extract", f"{locked / 'out'}: Permission denied")
    assert os.listdir(locked) == []


def test_extract_below_a_file_or_where_no_folder_can_be(images, tmp_path):
    (tmp_path / "a-file").write_text("")
    _one_line(docteur("extract", images["site"], tmp_path / "a-file" / "out"), "extract",
              f"{tmp_path / 'a-file' / 'out'}: Not a directory")
    # /proc refuses new folders: the parent is missing and cannot be made.
    _one_line(docteur("extract", images["site"], "/proc/docteur-test/out"), "extract",
              "/proc/docteur-test", "No such file or directory")


def test_make_into_a_folder_it_may_not_write(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = docteur("make", "-q", "--date", DATE, SITE, locked / "x.img", as_user=True)
    _one_line(proc, "make", str(locked), "not writable")
    assert os.listdir(locked) == []
