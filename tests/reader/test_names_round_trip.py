"""Acceptance (issue 3): hypothesis round trips, with every legal name.

test_reader's random trees draw names from a small alphabet (letters,
digits, `._- é`). Names are where readers break: spaces at either end,
newlines, tabs, backslashes, glob characters, `:`, `%`, emoji, names
that start with dots, and bytes that are not UTF-8 at all. This draws
trees with the builder's own name strategy (tests.helpers.treegen.git_trees), builds
them with `make_image`, and reads every file, link and directory back in
both modes, from the file and over NBD through the project's plugin
(real nbdkit), comparing with the source directory itself.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from docteur_core.format import objects as obj
from docteur_core.make import make_image
from docteur_core.reader import MODES, Image
from tests.helpers.support import PLUGIN, NbdkitServer
from tests.helpers.treegen import git_trees as trees
from tests.helpers.treegen import source_of

DATE = "2026-01-01T00:00:00Z"


def source_entries(root: bytes) -> dict[bytes, tuple]:
    """path -> ("dir", sorted names) | ("file", bytes, exec) | ("link", target), from disk."""
    found: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = b"" if rel == b"." else rel
        found[rel] = ("dir", sorted(dirnames + filenames))
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            path = os.path.join(rel, name) if rel else name
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[path] = ("link", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    found[path] = ("file", f.read(), bool(st.st_mode & stat.S_IXUSR))
    return found


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check(image: Image, expect: dict[bytes, tuple]) -> None:
    for path, e in expect.items():
        if e[0] == "dir":
            assert image.exists(path) == "directory", path
            listing = image.list(path)
            assert sorted(os.fsencode(n) for n, _ in listing) == e[1], path
        elif e[0] == "file":
            assert image.get(path) == e[1], path
            assert image.stat(path).mode == (obj.MODE_EXEC if e[2] else obj.MODE_FILE), path
        else:
            assert image.get(path) == e[1], path
            assert os.fsencode(image.readlink(path)) == e[1], path
            assert image.stat(path).mode == obj.MODE_LINK, path
    assert {os.fsencode(n.path) for n in image.walk()} == {p for p in expect if p}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The project's plugin serving whatever image is renamed onto `live` (new
    connections get the new image)."""
    base = tmp_path_factory.mktemp("names")
    (base / "seed").mkdir()
    live = base / "live.img"
    make_image(base / "seed", live, date=DATE)
    with NbdkitServer(PLUGIN, f"image={live}", unix=True) as server:
        yield live, server


@pytest.mark.nbdkit
@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "20")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(spec=trees)
def test_every_legal_name_reads_back(served, spec):
    live, server = served
    with tempfile.TemporaryDirectory(prefix="names-", dir=live.parent) as tmp:
        tmp = Path(tmp)
        src = source_of(spec, tmp)
        expect = source_entries(os.fsencode(src))
        names = {os.path.basename(p) for p in expect if p}
        for what, test in [("non-UTF-8", lambda n: not _utf8(n)),
                           ("newline", lambda n: b"\n" in n),
                           ("space at an end", lambda n: n[:1] == b" " or n[-1:] == b" "),
                           ("hidden", lambda n: n.startswith(b"."))]:
            if any(test(n) for n in names):  # --hypothesis-show-statistics shows how often
                event(f"has a name: {what}")
        img = tmp / "disk.img"
        make_image(src, img, date=DATE,
                   warn=lambda w: " that others may not read " in w or pytest.fail(w))
        for mode in MODES:
            with Image.open(img, mode) as image:
                check(image, expect)
        os.replace(img, live)
        for mode in MODES:
            with Image.open(server.uri, mode, verify=True) as image:
                check(image, expect)
