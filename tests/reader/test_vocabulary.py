"""One vocabulary between the API, the CLI and JSON (docs/vocabulary.md):
a path's kind, an object id, a mode and a mode of reading are each said one
way, whoever says them. Each test puts two sayers side by side on a real
repository holding every kind (git builds it, `make_image` packs it)."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import pytest

from docteur_core import cli
from docteur_core.make import make_image
from docteur_core.reader import Image

from tests.helpers.support import REPO_ROOT, git

# Written out, not imported: the words are the interface under test.
KINDS = {"file", "executable", "symlink", "directory", "submodule"}
# One path of each kind in the fixture.
SAMPLES = {"plain.txt": "file", "run.sh": "executable", "link": "symlink", "a": "directory",
           "a/module": "submodule", "a/b/deep": "file"}


def _docteur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, cwd=REPO_ROOT)


def _json(*args: str):
    proc = _docteur(*args)
    assert proc.returncode in (0, 1), proc.stderr  # diff says 1 for "different"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vocab")
    repo = tmp / "repo"
    git("init", "-q", str(repo))
    (repo / "plain.txt").write_text("plain\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    os.symlink("plain.txt", repo / "link")
    (repo / "a" / "b").mkdir(parents=True)
    (repo / "a" / "b" / "deep").write_text("deep\n")
    git("add", "-A", cwd=repo)
    git("update-index", "--add", "--cacheinfo", "160000," + "1" * 40 + ",a/module", cwd=repo)
    git("commit", "-q", "-m", "every kind", cwd=repo)
    out = tmp / "repo.img"
    make_image(repo, out)
    return out


def _stat_text(image, path: str) -> dict[str, str]:
    proc = _docteur("stat", image, path)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(": ", 1) for line in proc.stdout.decode().splitlines())


def test_the_api_says_a_path_s_kind_in_the_cli_s_word(image):
    """Stat.kind, Node.kind, exists and list say `docteur stat`'s word, and
    so do the JSON documents (stat's, ls's, diff's)."""
    with Image.open(image) as img:
        nodes = {n.path: n for n in img.walk()}
        for path, kind in SAMPLES.items():
            parent, _, name = path.rpartition("/")
            said = {
                "docteur stat": _stat_text(image, path)["kind"],
                "docteur stat --json": _json("stat", "--json", image, path)["kind"],
                "docteur ls --json": {e["name"]: e["kind"] for e in
                                      _json("ls", "--json", image, parent)["entries"]}[name],
                "Image.stat": img.stat(path).kind,
                "Node.kind": nodes[path].kind,
                "Image.exists": img.exists(path),
                "Image.list": dict(img.list(parent))[name],
            }
            assert set(said.values()) == {kind}, (path, said)
        assert {n.kind for n in nodes.values()} == KINDS
    empty = image.parent / "empty"
    empty.mkdir(exist_ok=True)
    changes = {c["path"]: c for c in _json("diff", "--json", empty, image)["changes"]}
    for path, kind in SAMPLES.items():
        if kind != "directory":  # diff lists blobs and submodules, as git diff-tree -r
            assert (changes[path]["old_kind"], changes[path]["new_kind"]) == (None, kind)


def test_mirage_s_words_stay_as_aliases(image):
    from docteur_core.reader import DICTIONARY, VALUE, kv_kind

    with Image.open(image) as img:
        for node in img.walk():
            want = DICTIONARY if node.kind == "directory" else VALUE
            assert node.kv_kind == img.stat(node.path).kv_kind == kv_kind(node.kind) == want
    assert (VALUE, DICTIONARY) == ("value", "dictionary")


def test_a_mode_is_a_number_in_json_as_in_the_api(image):
    empty = image.parent / "empty"
    empty.mkdir(exist_ok=True)
    changes = {c["path"]: c for c in _json("diff", "--json", empty, image)["changes"]}
    with Image.open(image) as img:
        listed = {e["path"]: e for e in _json("ls", "-r", "--json", image)["entries"]}
        for node in img.walk():
            mode = img.stat(node.path).mode
            assert type(mode) is int and mode == node.mode
            assert _json("stat", "--json", image, node.path)["mode"] == mode
            if node.path in listed:
                assert listed[node.path]["mode"] == mode
            if node.path in changes:
                assert changes[node.path]["new_mode"] == mode
        assert set(listed) <= {n.path for n in img.walk()} and len(listed) == 5
    # Text shows it as git does: 6 octal digits.
    assert _stat_text(image, "a")["mode"] == "040000"
    assert _stat_text(image, "run.sh")["mode"] == "100755"


def test_an_id_has_one_form_in_node_stat_digest_and_json(image):
    hex40 = re.compile(r"[0-9a-f]{40}")
    with Image.open(image) as img:
        listed = {e["name"]: e["id"] for e in _json("ls", "--json", image)["entries"]}
        assert img.root.id == img.stat("").id == img.digest("/") == img.commit.tree
        for node in img.walk():
            st = img.stat(node.path)
            assert hex40.fullmatch(node.id), node
            assert node.id == st.id == img.digest(node.path)
            assert node.raw_id == bytes.fromhex(node.id)  # the store's form, named apart
            if "/" not in node.path:
                assert listed[node.path] == node.id
        for path in SAMPLES:
            assert _stat_text(image, path)["id"] == img.stat(path).id


def _guest_mode(image) -> str:
    proc = subprocess.run([sys.executable, "-m", "docteur_core.reader.guest", str(image),
                           "info"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)["mode"]


def test_image_open_reads_in_the_mode_every_verb_reads_in_by_default(image):
    parser, _ = cli.build_parser()
    defaults = {argv[0]: parser.parse_args(argv).mode for argv in (
        ["ls", "x"], ["cat", "x", "p"], ["stat", "x", "p"], ["tree", "x"], ["info", "x"],
        ["extract", "x", "d"], ["diff", "a", "b"], ["mount", "x", "m"], ["boot", "x", "ls"],
        ["http", "x"])}
    with Image.open(image) as img:
        opened = img.mode
    defaults["docteur info --json"] = _json("info", "--json", image)["mode"]
    defaults["the guest"] = _guest_mode(image)
    assert set(defaults.values()) == {opened} == {"light"}, defaults


def test_verify_json_names_things_as_info_and_stat_do(image):
    report = _json("verify", "--json", image)
    info = _json("info", "--json", image)
    assert report["tree"] == info["tree"] and report["capacity"] == info["capacity"]
    assert report["path_index"]["region_offset"] == info["path_index"]["region_offset"]
    with Image.open(image) as img:
        kinds = collections.Counter(n.kind for n in img.walk())
    assert report["kinds"] == {kind: kinds[kind] for kind in KINDS}
    # The names before stay, with the same values.
    assert (report["root"], report["size"]) == (report["tree"], report["capacity"])
    assert report["path_index"]["start"] == report["path_index"]["region_offset"]
