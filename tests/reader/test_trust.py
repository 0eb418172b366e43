"""What the readers trust, tested through the CLI and the API (issue 21):
`.git` names refused by every reader, walks that carry the tree they are
in (no lookup from the root per folder), the readers' `--allowed-signers`,
`--commit` on every reading verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.errors import DamagedImage
from docteur_core.make import make_image
from docteur_core.reader import Image

from tests.helpers.forge import Obj, build, commit, hostile_image, tree

DOCTEUR = [sys.executable, "-m", "docteur_core"]
DATE = "2025-06-06T06:06:06Z"


def docteur(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# -- names git refuses to check out -------------------------------------------------

REFUSED = [b".git", b".GIT", b".Git", b".git.", b".git ", b"git~1", b"GIT~1",
           b".git::$INDEX_ALLOCATION", ".g\u200cit".encode(), b"\xef\xbb\xbf.git"]


@pytest.mark.parametrize("name", REFUSED, ids=lambda n: n.decode("utf-8", "replace"))
def test_a_dotgit_entry_is_refused_by_every_reader(tmp_path, name):
    config = Obj("blob", b"[core]\n\tfsmonitor = touch /tmp/pwned-by-docteur\n")
    inner = Obj("tree", tree(("100644", "config", config.oid)))
    img = tmp_path / "dotgit.img"
    hostile_image(img, [("040000", name.decode(), inner), ("100644", "ok.txt", Obj("blob", b"ok\n"))])
    for mode in ("light", "fast"):
        for verb in (["ls", img], ["cat", img, "ok.txt"], ["tree", img], ["ls", "-r", img]):
            one_line_error(docteur(*verb[:1], "--mode", mode, *verb[1:]), "git refuses")
        dest = tmp_path / f"out-{mode}"
        one_line_error(docteur("extract", "--mode", mode, img, dest), "git refuses")
        assert not any(p.name.lower().startswith(".git") for p in tmp_path.rglob("*")
                       if dest in p.parents)
    proc = subprocess.run([sys.executable, "-S", "-m", "docteur_core.reader.guest", str(img),
                           "ls"], capture_output=True)
    one_line_error(proc, "git refuses")
    with pytest.raises(DamagedImage, match="git refuses"):
        Image.open(img).list("")


def test_a_gitmodules_link_is_refused_a_gitmodules_file_is_not(tmp_path):
    target = Obj("blob", b"/etc/passwd")
    img = tmp_path / "mods.img"
    hostile_image(img, [("120000", ".gitmodules", target)])
    with pytest.raises(DamagedImage, match="git refuses"):
        Image.open(img).list("")
    hostile_image(img, [("100644", ".gitmodules", target)])
    assert Image.open(img).list("") == [(".gitmodules", "file")]


def test_make_skips_the_names_git_refuses(tmp_path):
    src = tmp_path / "src"
    (src / "GIT~1").mkdir(parents=True)
    (src / "GIT~1" / "config").write_text("x")
    (src / "keep.txt").write_text("kept\n")
    warnings: list[str] = []
    make_image(src, tmp_path / "x.img", date=DATE, warn=warnings.append)
    assert any("GIT~1" in w and "git refuses" in w for w in warnings), warnings
    assert Image.open(tmp_path / "x.img").list("") == [("keep.txt", "file")]


# -- deep trees: a walk carries the tree it is in ---------------------------------------


def _deep(depth: int) -> tuple[list[Obj], bytes]:
    """A chain of `depth` folders `d/d/d/...`, one file at the bottom."""
    leaf = Obj("blob", b"bottom\n")
    below = Obj("tree", tree(("100644", "f", leaf.oid)))
    objs = [leaf, below]
    for _ in range(depth - 1):
        below = Obj("tree", tree(("040000", "d", below.oid)))
        objs.append(below)
    top = Obj("tree", tree(("040000", "d", below.oid)))
    c = Obj("commit", commit(top.oid))
    return [c, top, *objs], c.oid


def counted_trees(image: Image) -> list[int]:
    """Count the image's tree lookups (parsed or from its cache) from now on."""
    calls = [0]
    take = image._tree

    def counting(*args):
        calls[0] += 1
        return take(*args)

    image._tree = counting
    return calls


@pytest.mark.parametrize("verify", [True, False])
def test_walks_read_each_tree_of_a_deep_image_once(verify):
    depth = 3000
    objs, cid = _deep(depth)
    data = bytes(build(objs, cid))
    from docteur_core.reader.commands import run_verb

    class Sink:
        def __init__(self) -> None:
            self.size = 0

        def write(self, b: bytes) -> int:
            self.size += len(b)
            return len(b)

        def flush(self) -> None:
            pass

    for verb, flags in (("ls", {"-r"}), ("tree", set())):
        image = Image.open(MemoryDevice(data, 512), "light", verify=verify)
        calls = counted_trees(image)
        run_verb(image, verb, [""], Sink(), flags)
        # Each tree taken a few times (a lookup per folder from the root
        # would take depth^2 / 2 trees: 4.5 million here).
        assert calls[0] <= 3 * (depth + 2), (verb, calls[0])


def test_extract_and_diff_of_a_deep_image_read_each_tree_once(tmp_path):
    from docteur_core.files.extract import extract

    depth = 3000
    objs, cid = _deep(depth)
    img = tmp_path / "deep.img"
    img.write_bytes(bytes(build(objs, cid)))
    out = tmp_path / "out"
    try:
        with Image.open(img, "light") as image:
            calls = counted_trees(image)
            counts = extract(image, "", out)
            assert counts.files == 1 and counts.dirs == depth
            assert calls[0] <= 3 * (depth + 2), calls[0]
    finally:  # shutil.rmtree (pytest's clean-up) recurses once per level: too deep
        subprocess.run(["rm", "-rf", str(out)], check=True)
    proc = docteur("diff", "--mode", "light", img, img)
    assert proc.returncode == 0, proc.stderr


# -- the readers' --commit and --allowed-signers ------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    from tests.helpers.signing import allowed_file, keygen

    tmp = tmp_path_factory.mktemp("signed")
    key = keygen(tmp / "alice", "alice@example.com")
    other = keygen(tmp / "bob", "bob@example.com")
    src = tmp / "src"
    src.mkdir()
    (src / "index.html").write_text("<h1>signed</h1>\n")
    img = tmp / "signed.img"
    make_image(src, img, date=DATE, sign=str(key), warn=lambda w: None)
    plain = tmp / "plain.img"
    make_image(src, plain, date=DATE, warn=lambda w: None)
    return {"img": img, "plain": plain,
            "allowed": allowed_file(tmp / "allowed", "alice@example.com", key),
            "others": allowed_file(tmp / "others", "bob@example.com", other)}


def test_every_reading_verb_takes_allowed_signers(signed, tmp_path):
    img, allowed = signed["img"], signed["allowed"]
    proc = docteur("cat", "--allowed-signers", allowed, img, "index.html")
    assert (proc.returncode, proc.stdout) == (0, b"<h1>signed</h1>\n"), proc.stderr
    for verb in (["ls"], ["stat", "index.html"], ["tree"], ["info"]):
        proc = docteur(verb[0], "--allowed-signers", allowed, img, *verb[1:])
        assert proc.returncode == 0, (verb, proc.stderr)
        proc = docteur(verb[0], "--allowed-signers", signed["others"], img, *verb[1:])
        one_line_error(proc, "wrong image")
        assert proc.stdout == b""
    one_line_error(docteur("cat", "--allowed-signers", allowed, signed["plain"], "index.html"),
                   "not signed")
    proc = docteur("extract", "--allowed-signers", allowed, img, tmp_path / "out")
    assert proc.returncode == 0 and (tmp_path / "out" / "index.html").exists()
    proc = docteur("extract", "--allowed-signers", signed["others"], img, tmp_path / "no")
    one_line_error(proc, "wrong image")
    assert not (tmp_path / "no").exists()


def test_every_reading_verb_takes_commit(signed, tmp_path):
    img = signed["img"]
    cid = img.read_bytes()[:20].hex()
    other = signed["plain"].read_bytes()[:20].hex()
    for verb in (["ls"], ["cat", "index.html"], ["stat", "index.html"], ["tree"], ["info"]):
        assert docteur(verb[0], "--commit", cid, img, *verb[1:]).returncode == 0, verb
        proc = docteur(verb[0], "--commit", other, img, *verb[1:])
        one_line_error(proc, "wrong image", other)
        assert proc.stdout == b""
    one_line_error(docteur("extract", "--commit", other, img, tmp_path / "x"), "wrong image")
    proc = docteur("diff", "--commit", other, img, img)
    assert proc.returncode == 2 and b"wrong image" in proc.stderr
    proc = docteur("ls", "--commit", "abc", img)
    assert proc.returncode == 2 and b"40 hexadecimal digits" in proc.stderr


def test_a_light_mounts_find_of_a_deep_image_takes_each_tree_a_few_times():
    """`find` on a mount looks a directory up, lists it, looks each entry up:
    each lookup continues from the last directory reached, not from the
    root (3,000 levels took over 120 s as a walk from the root each time)."""
    from docteur_core.mount.fs import ImageFS

    depth = 3000
    objs, cid = _deep(depth)
    image = Image.open(MemoryDevice(bytes(build(objs, cid)), 512), "light")
    fs = ImageFS(image)
    calls = counted_trees(image)
    found, todo = 0, ["/"]
    while todo:
        here = todo.pop()
        for name, mode, _ in fs.readdir(here):
            if name in (".", ".."):
                continue
            path = here.rstrip("/") + "/" + name
            fs.getattr(path)
            found += 1
            if name == "d":
                todo.append(path)
    assert found == depth + 1
    assert calls[0] <= 6 * (depth + 2), calls[0]
