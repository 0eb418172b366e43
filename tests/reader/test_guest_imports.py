"""The guest reader's start-up: what `python3 -S -m docteur_core.reader.guest` imports.

In an emulated guest every millisecond of imports on a host costs 30-50,
so the reader path must not pull in the standard library's heavy modules
(see the docteur_core package docstring). These tests run the real entry
point, as a user types it, and read the modules it imported from
`-X importtime`; they also check that the two tree parsers the import diet
relies on (`parse_tree` picks one) agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.format import objects
from docteur_core.make import make_image
from docteur_core.errors import DamagedImage
from tests.helpers import reference_git
from tests.helpers.support import REPO_ROOT

# Each is several milliseconds on a host, and none is needed to read a file.
HEAVY = {"typing", "dataclasses", "inspect", "ast", "asyncio", "re", "enum", "hashlib",
         "datetime", "threading", "argparse", "urllib.parse", "socket", "ssl"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "index.html").write_text("<h1>hello</h1>\n")
    (src / "docs").mkdir()
    (src / "docs" / "a.txt").write_text("a\n")
    (src / "link").symlink_to("index.html")
    out = tmp_path_factory.mktemp("img") / "site.img"
    make_image(src, out)
    return out


def guest_imports(*args: str) -> tuple[set[str], bytes]:
    """Modules a fresh `python3 -S -X importtime -m docteur_core.reader.guest ARGS` imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", "-m", "docteur_core.reader.guest",
                           *args], env=env, cwd="/", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    modules = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    assert "docteur_core.reader.image" in modules  # the parse saw the real imports
    return modules, proc.stdout


@pytest.mark.parametrize("verb", [["cat", "index.html"], ["ls"], ["ls", "docs"],
                                  ["stat", "link"], ["tree"]])
@pytest.mark.parametrize("mode", ["light", "fast"])
def test_reading_imports_nothing_heavy(image, verb, mode):
    modules, out = guest_imports(str(image), "--mode", mode, *verb)
    assert out  # the verb did its work
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_verify_and_info_import_only_what_they_need(image):
    modules, out = guest_imports(str(image), "--verify", "cat", "index.html")
    assert out == b"<h1>hello</h1>\n"
    assert not modules & (HEAVY - {"hashlib"}), sorted(modules & HEAVY)
    modules, out = guest_imports(str(image), "info")
    assert b"commit: " in out
    assert not modules & (HEAVY - {"datetime"}), sorted(modules & HEAVY)


@st.composite
def _git_trees(draw):
    """Trees as git writes them, sometimes with one flaw that only the
    entry-by-entry parse can judge."""
    n = draw(st.integers(0, 80))
    modes = [b"100644", b"100755", b"120000", b"40000", b"160000"]
    entries = [draw(st.sampled_from(modes)) + b" f%04d\0" % i + draw(st.binary(min_size=20,
                                                                             max_size=20))
               for i in range(n)]
    flaw = draw(st.sampled_from([None, b"040000 zz\0", b"100644 f0000\0", b"100644 .\0",
                                 b"100600 zz\0", b"100644 a/b\0"]))
    if flaw is not None:
        entries.insert(draw(st.integers(0, n)), flaw + b"\1" * 20)
    return b"".join(entries)


def _outcome(fn, data):
    try:
        return ("ok", fn(data, "t"))
    except DamagedImage as exc:
        return ("error", exc.what)


@pytest.mark.oracle
@given(_git_trees())
@settings(max_examples=100, deadline=None)
def test_both_tree_parsers_agree(data):
    want = _outcome(reference_git.parse_tree, data)
    assert _outcome(objects.parse_tree_raw, data) == want
    assert _outcome(objects._parse_tree_checked, data) == want
    entries = _outcome(objects.parse_tree, data)
    if entries[0] == "ok":
        entries = ("ok", [(e.mode, e.id, objects.encode_name(e.name)) for e in entries[1]])
    assert entries == want
