"""The reader against real images: `docteur make`'s and git's own.

Hypothesis draws random trees (files, executables, symbolic links, empty
directories, near-duplicate files that git stores as deltas); each becomes
an image with `make_image`, and every file, listing and mode is read back in
both modes, from the image file and from a real nbdkit serving it, and
compared with the source directory.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.format import objects as obj
from docteur_core.blockdev.block import FileDevice, MemoryDevice
from docteur_core.make import make_image
import hashlib

from docteur_core.format.pack import object_id
from docteur_core.errors import DamagedImage, NotADirectory, NotAFile, NotFound
from docteur_core.reader import Image, split_path

from tests.helpers.support import REPO_ROOT, NbdkitServer, git_reference_image

MODES = ("fast", "light")

# -- random trees -------------------------------------------------------------

_rnd = random.Random(7)
_BASE_TEXT = "\n".join(
    " ".join(_rnd.choice(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"])
             for _ in range(8)) for _ in range(120)).encode()


def _variant(at: int, insert: bytes) -> bytes:
    """A small edit of one shared text: git stores these as deltas."""
    i = at * len(_BASE_TEXT) // 1000
    return _BASE_TEXT[:i] + insert + _BASE_TEXT[i:]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._- é", min_size=1,
                max_size=10).filter(lambda n: n not in (".", "..") and not n.startswith(".git"))
file_leaf = st.tuples(
    st.just("file"),
    st.one_of(st.binary(max_size=2000),
              st.builds(_variant, st.integers(0, 1000), st.binary(max_size=40))),
    st.booleans())
link_leaf = st.tuples(st.just("link"), st.text(alphabet="abc./", min_size=1, max_size=20),
                      st.just(False))
trees = st.recursive(
    st.one_of(file_leaf, file_leaf, link_leaf, st.just({})),
    lambda children: st.dictionaries(names, children, max_size=6),
    max_leaves=30,
).filter(lambda t: isinstance(t, dict))


def materialize(tree: dict, root: Path) -> dict[str, tuple]:
    """Write `tree` under `root`; return path -> expectation."""
    expect: dict[str, tuple] = {}

    def go(node: dict, d: Path, prefix: str) -> None:
        d.mkdir(exist_ok=True)
        expect[prefix] = ("dir", sorted(node))
        for name, child in node.items():
            p = d / name
            path = f"{prefix}/{name}" if prefix else name
            if isinstance(child, dict):
                go(child, p, path)
            elif child[0] == "file":
                p.write_bytes(child[1])
                os.chmod(p, 0o755 if child[2] else 0o644)
                expect[path] = ("file", child[1], child[2])
            else:
                os.symlink(child[1], p)
                expect[path] = ("link", child[1])

    go(tree, root, "")
    return expect


def check_image(image: Image, expect: dict[str, tuple]) -> None:
    for path, e in expect.items():
        if e[0] == "dir":
            assert image.exists(path) == "directory"
            listing = image.list(path)
            assert sorted(n for n, _ in listing) == e[1]
            for name, kind in listing:
                child = expect[f"{path}/{name}" if path else name]
                assert kind == {"dir": "directory", "link": "symlink"}.get(
                    child[0], "executable" if child[0] == "file" and child[2] else "file")
            with pytest.raises(NotAFile):
                image.get(path)
        elif e[0] == "file":
            assert image.exists(path) == ("executable" if e[2] else "file")
            assert image.get(path) == e[1]
            assert image.size(path) == len(e[1])
            st_ = image.stat("/" + path)
            assert st_.mode == (obj.MODE_EXEC if e[2] else obj.MODE_FILE)
            assert st_.id == image.digest(path) == object_id("blob", e[1]).hex()
            with pytest.raises(NotADirectory):
                image.list(path)
        else:
            assert image.exists(path) == "symlink"
            assert image.readlink(path) == e[1]
            assert image.get(path) == e[1].encode()
            assert image.stat(path).mode == obj.MODE_LINK
    walked = {n.path for n in image.walk()}
    assert walked == {p for p in expect if p}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One nbdkit (file plugin) serving whatever image sits at `path`.

    The file plugin opens the file per connection, so each example replaces
    the file and connects afresh.
    """
    path = tmp_path_factory.mktemp("served") / "disk.img"
    path.write_bytes(b"\0" * 4096)
    with NbdkitServer("file", f"file={path}", unix=True) as server:
        yield path, server


@pytest.mark.nbdkit
@given(tree=trees)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_file_and_nbd(served, tree):
    served_path, server = served
    with tempfile.TemporaryDirectory(prefix="rt-") as tmp:
        src = Path(tmp) / "src"
        expect = materialize(tree, src)
        img = Path(tmp) / "disk.img"
        make_image(src, img, date="2021-02-03T04:05:06Z")
        for mode in MODES:
            with Image.open(img, mode) as image:
                check_image(image, expect)
                assert image.last_modified("").isoformat() == "2021-02-03T04:05:06+00:00"
        # A device with larger blocks than the image's padding (the last one short).
        with FileDevice(img, block_size=4096) as dev:
            check_image(Image.open(dev, "light"), expect)
        tmp_served = served_path.with_suffix(".new")
        tmp_served.write_bytes(img.read_bytes())
        os.replace(tmp_served, served_path)
        for mode in MODES:
            with Image.open(server.uri, mode, verify=True) as image:
                check_image(image, expect)


# -- git's own images (OFS and REF deltas), larger trees ----------------------

@pytest.fixture(scope="module", params=["ofs", "ref"])
def reference(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref-src")
    rnd = random.Random(3)
    expect = {}
    for v in range(8):  # 8 versions of a small project: deep delta chains
        for f in range(12):
            p = root / f"v{v}" / f"pkg{f % 3}" / f"mod{f}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            text = _variant((f * 77 + v * 13) % 1000, f"# v{v} f{f}\n".encode() * (v + 1))
            if rnd.random() < 0.3:
                text = text.replace(b"beta", b"BETA", v)
            p.write_bytes(text)
    img = tmp_path_factory.mktemp("ref-img") / "ref.img"
    info = git_reference_image(root, img, ofs_delta=request.param == "ofs")
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        expect[rel] = ("dir", sorted(os.listdir(p))) if p.is_dir() else ("file", p.read_bytes(),
                                                                         False)
    expect[""] = ("dir", sorted(os.listdir(root)))
    return img, info, expect


@pytest.mark.parametrize("mode", MODES)
def test_reference_image(reference, mode):
    img, info, expect = reference
    with Image.open(img, mode, verify=True) as image:
        check_image(image, expect)
        assert image.commit.id == info["commit"]
        assert image.commit.tree == info["tree"]
        assert image.commit.message == "reference image\n"
        assert image.commit.author == "Test Author <author@example.com>"
        assert image.commit.committer == "Test Committer <committer@example.com>"
        assert image.commit.date.isoformat() == "2020-01-01T00:00:00+00:00"
        assert image.digest("") == info["tree"]


def test_reference_image_has_deep_delta_chains(reference):
    """The fixture really exercises long chains (else the cache is untested)."""
    img, _, _ = reference
    with Image.open(img, "light") as image:
        store = image.store
        store.clear_cache()
        deltas = 0
        for node in image.files():
            before = store.objects_inflated
            store.clear_cache()
            image.get(node.path)
            deltas = max(deltas, store.objects_inflated - before)
        assert deltas >= 4


def test_delta_base_cache_avoids_rebuilding_chains(reference):
    img, _, expect = reference
    files = [p for p, e in expect.items() if e[0] == "file"]
    with Image.open(img, "fast", cache_bytes=0) as cold:
        for p in files:
            cold.get(p)
        cold_count = cold.store.objects_inflated
    with Image.open(img, "fast") as warm:
        for p in files:
            warm.get(p)
        warm_count = warm.store.objects_inflated
    # With the cache each entry is inflated once; without, chains are rebuilt.
    assert warm_count <= warm.store.object_count
    assert cold_count > 2 * warm_count


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """3,000 distinct small files: an IDX of about 170 sectors."""
    src = tmp_path_factory.mktemp("many")
    for i in range(3000):
        d = src / f"d{i % 30:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n")
    img = tmp_path_factory.mktemp("many-img") / "many.img"
    make_image(src, img)
    return img


def test_light_mode_reads_little(many):
    """Light boot: the header, PACK header and IDX head; a lookup: a few sectors."""
    from docteur_core.blockdev.block import ByteReader
    from docteur_core.reader.store import Store

    data = Path(many).read_bytes()
    dev = MemoryDevice(data, 512)
    reader = ByteReader(dev)
    store = Store(reader.pread, reader.capacity)
    touched = {o // 512 for off, n in dev.reads for o in range(off, off + n, 512)}
    idx_first = store.header.idx_offset // 512
    assert touched <= {0} | set(range(idx_first, idx_first + 4))
    image = Image(store, "light")
    dev.reads.clear()
    assert image.get("d07/f2887.txt") == b"file 2887\n"
    idx_sectors = {o // 512 for off, n in dev.reads for o in range(off, off + n, 512)
                   if o >= store.header.idx_offset}
    idx_total = (len(data) - store.header.idx_offset) // 512
    assert idx_total > 150
    # Three objects found (d07's tree, the blob; the root tree is cached):
    # each a binary search of ~12 probes plus its offset and CRC.
    assert len(idx_sectors) <= 3 * 15


@pytest.mark.parametrize("mode", MODES)
def test_many_files(many, mode):
    with Image.open(many, mode) as image:
        assert len(image) == 3030
        assert image.get("d29/f2999.txt") == b"file 2999\n"
        assert len(image.list("d00")) == 100


# -- paths and errors -----------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    src = tmp_path_factory.mktemp("small")
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.txt").write_bytes(b"deep\n")
    (src / "a" / "empty").mkdir()
    (src / "top.bin").write_bytes(bytes(range(256)) * 10)
    os.symlink("a/b/deep.txt", src / "ln")
    img = tmp_path_factory.mktemp("small-img") / "small.img"
    result = make_image(src, img, date="2022-03-04T05:06:07+02:00", message="hello\nworld\n")
    return img, result


@pytest.mark.parametrize("mode", MODES)
def test_paths_and_errors(small, mode):
    img, result = small
    with Image.open(img, mode) as image:
        for p in ("a/b/deep.txt", "/a/b/deep.txt", "a//b/./deep.txt", "../a/b/../b/deep.txt",
                  "/../../a/b/deep.txt", b"a/b/deep.txt"):
            assert image.get(p) == b"deep\n"
        assert image.exists("..") == "directory"
        assert image.exists("a/nope") is None
        assert image.exists("top.bin/x") is None
        with pytest.raises(NotFound, match="/a/nope"):
            image.get("a/nope")
        with pytest.raises(NotADirectory):
            image.get("top.bin/x")
        with pytest.raises(NotADirectory):
            image.list("top.bin")
        with pytest.raises(NotADirectory):
            image.get("ln/x")  # links are not followed
        with pytest.raises(NotAFile):
            image.get("a")
        with pytest.raises(NotAFile):
            image.size("a")
        with pytest.raises(NotAFile):
            image.readlink("top.bin")
        assert image.get_partial("top.bin", 250, 10) == bytes(range(250, 256)) + bytes(range(4))
        assert image.get_partial("top.bin", 2559, 10) == b"\xff"
        assert image.get_partial("top.bin", 5000, 10) == b""
        with pytest.raises(ValueError):
            image.get_partial("top.bin", -1, 10)
        assert image.list("") == [("a", "directory"), ("ln", "symlink"), ("top.bin", "file")]
        assert image.list("a/empty") == []
        assert image.readlink("ln") == "a/b/deep.txt"
        assert image.size("top.bin") == 2560
        st_ = image.stat("a")
        assert (st_.kind, st_.kv_kind, st_.mode, st_.size) == ("directory", "dictionary",
                                                               obj.MODE_DIR, 2)
        assert image.digest("a/b/deep.txt") == hashlib.sha1(b"blob 5\0deep\n").hexdigest()
        c = image.commit
        assert c.id == result.commit and c.tree == result.tree == image.digest("/")
        assert c.message == "hello\nworld\n"
        assert c.date.isoformat() == "2022-03-04T05:06:07+02:00"
        assert image.last_modified("a/b/deep.txt") == c.date
        with pytest.raises(NotFound):
            image.last_modified("nope")
        assert [n.path for n in image.walk("a")] == ["a/b", "a/empty", "a/b/deep.txt"]


def test_split_path():
    assert split_path("/a//b/./c/") == ("a", "b", "c")
    assert split_path("../../x/../y") == ("y",)
    assert split_path("") == ()


def test_open_errors(tmp_path):
    from docteur_core.errors import DocteurError
    with pytest.raises(DocteurError):
        Image.open(tmp_path / "missing.img")
    (tmp_path / "zero.img").write_bytes(b"")
    with pytest.raises(DamagedImage):
        Image.open(tmp_path / "zero.img")
    with pytest.raises(ValueError):
        Image.open(tmp_path / "zero.img", "medium")


# -- the command line and the guest entry point ------------------------------------

def _run(*args, python=(sys.executable,), env=None, **kw):
    return subprocess.run([*python, *args], capture_output=True, env=env, **kw)


def test_cli_verbs(small):
    img, result = small
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    r = _run("-m", "docteur_core", "ls", str(img), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == ["a/", "ln", "top.bin"]
    assert lines[0].startswith("040000 tree ")
    r = _run("-m", "docteur_core", "cat", "--mode", "fast", str(img), "top.bin", env=env)
    assert r.returncode == 0 and r.stdout == bytes(range(256)) * 10
    r = _run("-m", "docteur_core", "stat", str(img), "ln", env=env)
    assert b"kind: symlink" in r.stdout and b"target: a/b/deep.txt" in r.stdout
    r = _run("-m", "docteur_core", "tree", str(img), env=env)
    assert r.stdout.decode().splitlines()[:4] == ["/", "|-- a/", "|   |-- b/",
                                                  "|   |   `-- deep.txt"]
    r = _run("-m", "docteur_core", "info", str(img), env=env)
    assert f"commit: {result.commit}".encode() in r.stdout
    r = _run("-m", "docteur_core", "cat", str(img), "a/nope", env=env)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().strip() == "docteur cat: /a/nope does not exist"


@pytest.mark.parametrize("mode", MODES)
def test_guest_entry_point_bare_python(small, mode, tmp_path):
    """`python3 -S` with PYTHONPATH naming only the folder holding docteur_core."""
    img, result = small
    only = tmp_path / "only"
    only.mkdir()
    os.symlink(REPO_ROOT / "docteur_core", only / "docteur_core")
    env = {"PYTHONPATH": str(only), "PATH": os.environ.get("PATH", "/usr/bin")}
    guest = ("-S", "-m", "docteur_core.reader.guest", str(img), "--mode", mode)
    r = _run(*guest, "cat", "a/b/deep.txt", env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"deep\n", b"")
    r = _run(*guest, "ls", "a", env=env, cwd=tmp_path)
    assert [ln.split(b"\t")[1] for ln in r.stdout.splitlines()] == [b"b/", b"empty/"]
    r = _run(*guest, "info", env=env, cwd=tmp_path)
    assert r.returncode == 0 and result.commit.encode() in r.stdout
    r = _run(*guest, "cat", "no/such", env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, b"", b"docteur cat: /no/such does not exist (/no does not exist)\n")
    r = _run(*guest, "frobnicate", env=env, cwd=tmp_path)
    assert r.returncode == 2 and b"unknown verb" in r.stderr
    # Nothing outside the standard library and docteur_core was imported.
    probe = ("import sys, runpy; sys.argv=['guest', %r, 'cat', 'ln'];"
             "import docteur_core.reader.guest as g; rc = g.main();"
             "mods = {m.split('.')[0] for m in sys.modules};"
             "bad = [m for m in mods if m not in sys.stdlib_module_names "
             "and m not in ('docteur_core', '__main__')]; print(bad, file=sys.stderr)"
             % str(img))
    r = _run("-S", "-c", probe, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == b"[]", r.stderr


@pytest.mark.nbdkit
def test_reference_image_over_nbd_tcp(reference):
    img, info, expect = reference
    with NbdkitServer("file", f"file={img}") as server:
        for mode in MODES:
            with Image.open(server.uri, mode) as image:
                check_image(image, expect)
                assert image.commit.id == info["commit"]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        r = _run("-S", "-m", "docteur_core.reader.guest", server.uri, "cat", "v7/pkg2/mod11.py",
                 env=env)
        assert r.returncode == 0 and r.stdout == expect["v7/pkg2/mod11.py"][1]
