"""Hostile images against the limits: memory, work and paths bounded before they are spent.

Each test writes a small crafted image (a bomb is small by nature: a few
kilobytes that ask for gigabytes) and runs the real entry point, `docteur`
or the guest reader, in a subprocess whose address space is capped with
`RLIMIT_AS` and with a timeout (a hang guard, not a timing assertion): the
answer must be one clean line (or the right output), never a MemoryError,
a traceback or a hang. Issue 13, items 1 to 8.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.errors import LimitExceeded
from docteur_core.format import limits
from docteur_core.format.pack import OBJ_BLOB, entry_header
from docteur_core.reader import Image
from docteur_core.verify import verify_image

from tests.helpers.forge import Obj, build, commit, make_delta, simple, tree, varint
from tests.helpers.support import REPO_ROOT

MiB = 1 << 20
# Enough for the interpreter and docteur, far from what the bombs ask for.
CAP = 400 * MiB
TIMEOUT = 300


def _cap(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def docteur(*args: str, cap: int = CAP, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`docteur ARGS` in a subprocess capped at `cap` bytes of address space."""
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          preexec_fn=_cap(cap), stdout=stdout, stderr=subprocess.PIPE,
                          timeout=TIMEOUT, cwd=REPO_ROOT)


def guest(*args: str, cap: int = CAP) -> subprocess.CompletedProcess:
    """The guest reader (`python3 -S`, standard library only), capped likewise."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-S", "-m", "docteur_core.reader.guest",
                           *map(str, args)], preexec_fn=_cap(cap), capture_output=True,
                          timeout=TIMEOUT, env=env, cwd="/")


def one_clean_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with exactly one line on stderr, holding `words`."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "MemoryError" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def write(tmp_path: Path, data: bytes, name: str = "bomb.img") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def blob_id(size: int, chunks) -> bytes:
    h = hashlib.sha1(b"blob %d\0" % size)
    for c in chunks:
        h.update(c)
    return h.digest()


def zeros_entry(size: int) -> bytes:
    """A blob entry of `size` zeros, deflated as a stream (never held whole)."""
    z = zlib.compressobj(9)
    block = bytes(MiB)
    parts = [entry_header(OBJ_BLOB, size)]
    left = size
    while left:
        n = min(left, MiB)
        parts.append(z.compress(block[:n]))
        left -= n
    parts.append(z.flush())
    return b"".join(parts)


class RawObj(Obj):
    """An entry given as bytes, with the id it has (for objects too big to hold)."""

    def __init__(self, typ: str, raw: bytes, oid: bytes) -> None:
        super().__init__(typ, b"", oid=oid)
        self.raw = raw

    def entry(self) -> bytes:
        return self.raw


def copy(offset: int, size: int) -> bytes:
    """A delta copy instruction, every offset and size byte given."""
    return bytes([0xFF, offset & 255, offset >> 8 & 255, offset >> 16 & 255, offset >> 24,
                  size & 255, size >> 8 & 255, size >> 16 & 255])


# -- 1. delta bomb -----------------------------------------------------------------


@pytest.fixture(scope="module")
def delta_bomb(tmp_path_factory) -> Path:
    # A 16 MiB base of zeros and a delta of 64 copies of it: a few hundred
    # bytes declaring (and really building) a 1 GiB result.
    base_size = 16 * MiB
    base = RawObj("blob", zeros_entry(base_size), blob_id(base_size, [bytes(base_size)]))
    step = 8 * MiB
    result = 64 * base_size
    delta = varint(base_size) + varint(result) + b"".join(
        copy(off, step) for _ in range(64) for off in (0, step))
    bomb = Obj("blob", b"", oid=b"\x01" * 20, ofs_base=base, delta=delta)
    t = Obj("tree", tree(("100644", "f", bomb.oid)))
    c = Obj("commit", commit(t.oid))
    return write(tmp_path_factory.mktemp("delta"), build([c, t, base, bomb], c.oid))


@pytest.mark.parametrize("mode", ["light", "fast"])
def test_delta_bomb_is_refused_before_it_is_built(delta_bomb, mode):
    assert delta_bomb.stat().st_size < 64 << 10
    line = one_clean_line(docteur("cat", "--mode", mode, delta_bomb, "f"),
                          "over the limit of 536870912", "max_object_size")
    assert line.startswith("docteur cat: ")
    one_clean_line(guest(delta_bomb, "--mode", mode, "cat", "f"), "over the limit")


def test_delta_bomb_verify_and_reader_share_the_limit(delta_bomb):
    proc = docteur("verify", delta_bomb)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"over the limit of 536870912" in proc.stderr
    with pytest.raises(LimitExceeded, match="max_object_size"):
        Image.open(delta_bomb, "light").get("f")


# -- 2. zlib bomb ------------------------------------------------------------------

BIG = 600 * MiB  # over max_object_size, and over CAP


@pytest.fixture(scope="module")
def zlib_bomb(tmp_path_factory) -> tuple[Path, bytes]:
    oid = blob_id(BIG, (bytes(MiB) for _ in range(BIG // MiB)))
    big = RawObj("blob", zeros_entry(BIG), oid)
    small = Obj("blob", b"small\n")
    objs, cid = simple({"big": big, "small": small})
    return write(tmp_path_factory.mktemp("zlib"), build(objs, cid)), oid


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("mode", ["light", "fast"])
def test_zlib_bomb_cat_streams_in_bounded_memory(zlib_bomb, mode, tmp_path):
    path, oid = zlib_bomb
    assert path.stat().st_size < 2 * MiB
    out = tmp_path / "out"
    with open(out, "wb") as f:
        proc = docteur("cat", "--mode", mode, "--verify", path, "big", stdout=f)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert out.stat().st_size == BIG
    with open(out, "rb") as f:
        assert blob_id(BIG, iter(lambda: f.read(MiB), b"")) == oid
    out.unlink()


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_zlib_bomb_get_is_refused_by_the_limit(zlib_bomb):
    path, _ = zlib_bomb
    for mode in ("light", "fast"):  # stat proves the size by hashing it as it inflates
        proc = guest(path, "--mode", mode, "stat", "big")
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        assert b"size: %d\n" % BIG in proc.stdout
    with Image.open(path, "light") as image:
        with pytest.raises(LimitExceeded, match="max_object_size"):
            image.get("big")
        assert image.size("big") == BIG  # a size needs no memory
        assert image.get("small") == b"small\n"


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_zlib_bomb_verify_hashes_as_it_inflates(zlib_bomb):
    path, _ = zlib_bomb
    proc = docteur("verify", path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]


# -- 4. CPU bomb: work per lookup --------------------------------------------------


def chain_of_big_deltas(depth: int, size: int) -> tuple[list[Obj], Obj]:
    """A blob of `size` zeros, then `depth` deltas each copying the first
    `size` bytes of the previous object and adding two bytes."""
    base = RawObj("blob", zeros_entry(size), blob_id(size, [bytes(size)]))
    h = hashlib.sha1(b"blob %d\0" % (size + 2))
    h.update(bytes(size))
    objs: list[Obj] = [base]
    prev, prev_size = base, size
    half = size // 2
    for k in range(1, depth + 1):
        tail = bytes([k & 255, k >> 8 & 255])
        delta = (varint(prev_size) + varint(size + 2) + copy(0, half) + copy(half, size - half)
                 + bytes([2]) + tail)
        oid = h.copy()
        oid.update(tail)
        o = Obj("blob", b"", oid=oid.digest(), ofs_base=prev, delta=delta)
        objs.append(o)
        prev, prev_size = o, size + 2
    return objs, prev


@pytest.mark.parametrize("mode", ["light", "fast"])
def test_cpu_bomb_is_refused_before_it_is_built(mode, tmp_path):
    # 300 deltas of 16 MiB results: 4.7 GB to build one file of a 40 KB image.
    objs, last = chain_of_big_deltas(300, 16 * MiB)
    t = Obj("tree", tree(("100644", "f", last.oid)))
    c = Obj("commit", commit(t.oid))
    path = write(tmp_path, build([c, t, *objs], c.oid))
    assert path.stat().st_size < 64 << 10
    for proc in (docteur("cat", "--mode", mode, path, "f", stdout=subprocess.DEVNULL),
                 guest(path, "--mode", mode, "cat", "f")):
        one_clean_line(proc, "bytes of work", "max_lookup_bytes")
    with Image.open(MemoryDevice(path.read_bytes(), 512), mode,
                    max_lookup_bytes=40 * MiB) as image:
        with pytest.raises(LimitExceeded, match="max_lookup_bytes"):
            image.get("f")


def test_a_chain_within_the_work_limit_is_read(tmp_path):
    objs, last = chain_of_big_deltas(3, 1 * MiB)
    t = Obj("tree", tree(("100644", "f", last.oid)))
    c = Obj("commit", commit(t.oid))
    data = bytes(build([c, t, *objs], c.oid))
    with Image.open(MemoryDevice(data, 512), "light", verify=True) as image:
        assert image.get("f") == bytes(MiB) + bytes([3, 0])
    with Image.open(MemoryDevice(data, 512), "light", max_lookup_bytes=3 * MiB) as image:
        with pytest.raises(LimitExceeded, match="max_lookup_bytes"):
            image.get("f")


# -- 5. a huge commit message -------------------------------------------------------


@pytest.fixture(scope="module")
def huge_message(tmp_path_factory) -> Path:
    f = Obj("blob", b"file\n")
    t = Obj("tree", tree(("100644", "f", f.oid)))
    head = (f"tree {t.oid.hex()}\nauthor A <a@example.com> 1600000000 +0000\n"
            f"committer C <c@example.com> 1600000000 +0000\n\nsubject\n").encode()
    size = len(head) + 400 * MiB
    z = zlib.compressobj(9)
    raw = [entry_header(1, size), z.compress(head)]
    line = b"x" * 1023 + b"\n"
    block = line * 1024
    h = hashlib.sha1(b"commit %d\0" % size)
    h.update(head)
    for _ in range(400):
        raw.append(z.compress(block))
        h.update(block)
    raw.append(z.flush())
    c = RawObj("commit", b"".join(raw), h.digest())
    return write(tmp_path_factory.mktemp("msg"), build([c, t, f], c.oid))


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("mode", ["light", "fast"])
def test_huge_commit_message_is_not_read_at_open(huge_message, mode):
    assert huge_message.stat().st_size < 2 * MiB
    for proc in (docteur("cat", "--mode", mode, huge_message, "f", cap=200 * MiB),
                 guest(huge_message, "--mode", mode, "cat", "f", cap=200 * MiB)):
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        assert proc.stdout == b"file\n"


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_huge_commit_message_info_shows_its_beginning(huge_message):
    proc = guest(huge_message, "info", cap=200 * MiB)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    out = proc.stdout.decode()
    assert "    subject\n" in out and "cut after 65536 characters" in out
    assert len(out) < 200 << 10


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("quick", [False, True])
def test_huge_commit_message_verify_shows_its_beginning(huge_message, quick):
    """verify hashes the whole 400 MiB commit object (the full check streams
    it, as it does a big blob) but holds and prints only what info shows:
    the message's first MAX_SHOWN_MESSAGE characters, then a line saying it
    was cut. It used to print it whole: 1.25 GB of RSS, a MemoryError here."""
    from docteur_core.reader.commands import MAX_SHOWN_MESSAGE

    with Image.open(huge_message, "light") as image:
        size = image.commit_size
    flags = ["--quick"] if quick else []
    proc = docteur("verify", *flags, huge_message, cap=200 * MiB)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    out = proc.stdout.decode()
    assert len(out) < 200 << 10
    head, _, message = out.partition("\n\n")
    assert head.startswith("commit\t: ") and "\nroot\t: " in head
    cut = f"[... cut after {MAX_SHOWN_MESSAGE} characters: the commit object is {size} bytes]"
    shown = ("subject\n" + ("x" * 1023 + "\n") * 64)[:MAX_SHOWN_MESSAGE]
    assert message == shown + "\n" + cut + "\n"
    proc = docteur("verify", "--json", *flags, huge_message, cap=200 * MiB)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["message_complete"] is False
    assert report["message"] == shown


def test_a_whole_message_is_complete(plain_image):
    proc = docteur("verify", "--json", plain_image)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    report = json.loads(proc.stdout)
    assert report["message_complete"] is True and report["message"] == "hostile\n"


# -- 6. sizes come from a checked header ----------------------------------------------


@pytest.mark.parametrize("mode", ["light", "fast"])
def test_stat_size_of_a_damaged_header_is_an_error(mode, tmp_path):
    f = Obj("blob", b"0123456789" * 10)
    objs, cid = simple({"f": f})
    data = build(objs, cid)
    good = write(tmp_path, data, "good.img")
    assert b"size: 100\n" in docteur("stat", "--mode", mode, good, "f").stdout
    # Flip the low size bits in f's entry header: the entry still parses,
    # declaring 101 bytes; only the IDX's CRC-32 can tell.
    at = 28 + f.offset
    assert data[at] & 0x0F == 100 & 0x0F
    data[at] ^= 0x01
    path = write(tmp_path, data)
    proc = docteur("stat", "--mode", mode, path, "f")
    assert b"size: 101" not in proc.stdout
    one_clean_line(proc, "damaged image")


# -- 7. tracebacks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_image(tmp_path_factory) -> Path:
    objs, cid = simple({"f": Obj("blob", b"f\n")})
    return write(tmp_path_factory.mktemp("plain"), build(objs, cid))


def test_empty_path_is_the_root(plain_image):
    one_clean_line(docteur("cat", plain_image, ""), "/ is a directory")
    proc = docteur("stat", plain_image, "")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"path: /\nkind: directory\n" in proc.stdout


@pytest.mark.parametrize("zone,shown", [
    ("+9999", "+9999 is out of range"),
    ("-2400", "-2400 is out of range"),
    ("+" + "9" * 20, "9999999999 is out of range"),
    ("+2359", "+23:59"),
])
def test_info_with_a_zone_out_of_range(zone, shown, tmp_path):
    f = Obj("blob", b"f\n")
    t = Obj("tree", tree(("100644", "f", f.oid)))
    c = Obj("commit", (f"tree {t.oid.hex()}\nauthor A <a@example.com> 1600000000 {zone}\n"
                       f"committer C <c@example.com> 1600000000 {zone}\n\nm\n").encode())
    path = write(tmp_path, build([c, t, f], c.oid))
    for proc in (docteur("info", path), guest(path, "info")):
        assert proc.returncode == 0, proc.stderr.decode()
        assert shown in proc.stdout.decode()
    assert docteur("verify", path).returncode == 0


# -- 3. path explosion --------------------------------------------------------------


@pytest.fixture(scope="module")
def explosion(tmp_path_factory) -> Path:
    # 61 trees, each naming the one below twice: 2^60 paths in 6 KB.
    f = Obj("blob", b"leaf\n")
    level = Obj("tree", tree(("100644", "f", f.oid)))
    objs = [f, level]
    for _ in range(60):
        level = Obj("tree", tree(("040000", "a", level.oid), ("040000", "b", level.oid)))
        objs.append(level)
    c = Obj("commit", commit(level.oid))
    return write(tmp_path_factory.mktemp("paths"), build([c, *objs], c.oid))


def test_path_explosion_light_tree_stops(explosion):
    assert explosion.stat().st_size < 16 << 10
    for proc in (docteur("tree", explosion), guest(explosion, "tree")):
        one_clean_line(proc, "more than 1000000 paths", "max_paths")
        assert proc.stdout == b""  # counted before the first line is drawn


@pytest.mark.parametrize("reader", ["docteur", "guest"])
def test_path_explosion_fast_open_is_refused(explosion, reader):
    proc = (docteur("ls", "--mode", "fast", explosion) if reader == "docteur"
            else guest(explosion, "--mode", "fast", "ls"))
    one_clean_line(proc, "more than 1000000 paths", "max_paths")


def test_path_explosion_verify_refuses_what_readers_refuse(explosion):
    proc = docteur("verify", explosion)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"(max_paths), tree " in proc.stderr
    report = verify_image(MemoryDevice(explosion.read_bytes(), 512))
    assert [p[2] for p in report.problems] == [
        f"the trees name {2 ** 61 + 2 ** 60 - 2} paths, more than the limit of 1000000 "
        "(max_paths)"]


def test_long_names_bound_the_walk_by_bytes(tmp_path):
    # Few paths, each long: bounded by max_path_bytes, not only by count.
    f = Obj("blob", b"leaf\n")
    level = Obj("tree", tree(("100644", "f", f.oid)))
    objs = [f, level]
    for i in range(30):
        level = Obj("tree", tree(("040000", "a" * 200, level.oid), ("040000", "b" * 200,
                                                                       level.oid)))
        objs.append(level)
    c = Obj("commit", commit(level.oid))
    data = bytes(build([c, *objs], c.oid))
    with pytest.raises(LimitExceeded, match="max_path_bytes"):
        Image.open(MemoryDevice(data, 512), "fast", max_path_bytes=10 << 20)


@pytest.fixture(scope="module")
def wide_tree(tmp_path_factory) -> Path:
    f = Obj("blob", b"x\n")
    t = Obj("tree", tree(*[("100644", f"f{i:06d}", f.oid) for i in range(50_000)]))
    c = Obj("commit", commit(t.oid))
    return write(tmp_path_factory.mktemp("wide"), build([c, t, f], c.oid))


def test_a_wide_tree_is_counted_as_it_is_parsed(wide_tree):
    for mode in ("light", "fast"):
        one_clean_line(docteur("ls", "--mode", mode, "--max-paths", "1000", wide_tree),
                       "tree names more than 1000 entries", "max_paths")
    report = verify_image(MemoryDevice(wide_tree.read_bytes(), 512), max_paths=1000)
    assert any("tree names more than 1000 entries" in p[2] for p in report.problems)
    proc = docteur("verify", "--max-paths", "1000", wide_tree)
    assert proc.returncode == 1 and b"more than 1000 entries" in proc.stderr
    assert docteur("verify", wide_tree).returncode == 0
    with Image.open(wide_tree, "fast") as image:
        assert len(image) == 50_000


# -- 4. verify is linear in the pack for chains of big objects -------------------------


def test_verify_does_not_rebuild_a_chain_of_big_objects(tmp_path):
    # Objects over a quarter of the cache each: before, every delta rebuilt
    # the chain from its base (depth 60: 1,770 rebuilds); now none.
    objs, last = chain_of_big_deltas(60, 300 << 10)
    t = Obj("tree", tree(("100644", "f", last.oid)))
    c = Obj("commit", commit(t.oid))
    data = bytes(build([c, t, *objs], c.oid))
    report = verify_image(MemoryDevice(data, 512), cache_bytes=1 << 20)
    assert report.ok, report.problem_lines()
    assert report.stats["rebuilt"] == 0
    assert report.counts.deltas == 60


# -- 8. git's tree order; JSON whatever the names ---------------------------------------


@pytest.mark.parametrize("names,ok", [
    ([("100644", "a.c"), ("040000", "a"), ("100644", "a0")], True),  # "a/" sorts after "a.c"
    ([("040000", "a"), ("100644", "a.c")], False),
    ([("100644", "b"), ("100644", "a")], False),
])
def test_verify_rejects_an_unsorted_tree(names, ok, tmp_path):
    f = Obj("blob", b"x\n")
    sub = Obj("tree", tree(("100644", "f", f.oid)))
    t = Obj("tree", tree(*[(m, n, sub.oid if m == "040000" else f.oid) for m, n in names]))
    c = Obj("commit", commit(t.oid))
    path = write(tmp_path, build([c, t, sub, f], c.oid))
    proc = docteur("verify", path)
    if ok:
        assert proc.returncode == 0, proc.stderr.decode()
    else:
        assert proc.returncode == 1
        assert b"malformed tree: entries are not in git's order" in proc.stderr


def test_verify_json_escapes_names_that_are_not_utf8(tmp_path):
    f = Obj("blob", b"x\n")
    raw_tree = b"100644 caf\xe9\0" + b"\x11" * 20  # a blob that is not in the pack
    t = Obj("tree", raw_tree)
    c = Obj("commit", commit(t.oid))
    path = write(tmp_path, build([c, t, f], c.oid))
    proc = docteur("verify", "--json", path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout.decode("utf-8"))  # strict: valid UTF-8, valid JSON
    assert any("caf\\xe9 is not in the pack" in p["what"] for p in report["problems"])


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_a_file_over_the_object_limit_is_built_whole_and_streamed_by_every_reader(tmp_path):
    """Over MAX_OBJECT_SIZE a file is stored whole (bigFileThreshold) and read as
    it inflates: what `make` accepts, `verify`, `cat` and the guest read, in
    memory far below the file's size."""
    from docteur_core.format import limits
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    size = limits.MAX_OBJECT_SIZE + 5 * MiB
    with open(src / "big.bin", "wb") as f:
        f.truncate(size)  # zeros: a small image, a big file
    image = tmp_path / "big.img"
    made = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--date",
                           "2026-01-01T00:00:00Z", str(src), str(image)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    checked = docteur("verify", image)
    assert checked.returncode == 0, checked.stderr
    for run in (lambda: docteur("cat", image, "big.bin"), lambda: guest(image, "cat", "big.bin")):
        read = run()
        assert read.returncode == 0, read.stderr
        assert len(read.stdout) == size and read.stdout.count(0) == size


def test_verify_refuses_what_no_reader_would_build(tmp_path):
    """A chain whose cold read costs more than max_lookup_bytes: the reader
    refuses the file, and verify reports the object instead of building it."""
    text = b"line of text\n" * 400
    objs_chain = [Obj("blob", text)]
    for i in range(1, 6):
        target = text + b"more %d\n" % i * i
        prev = objs_chain[-1]
        objs_chain.append(Obj("blob", target, ofs_base=prev, delta=make_delta(prev.data, target)))
    files = {f"f{i}.txt": o for i, o in enumerate(objs_chain)}
    t = Obj("tree", tree(*[("100644", n, o.oid) for n, o in sorted(files.items())]))
    c = Obj("commit", commit(t.oid))
    image = tmp_path / "chain.img"
    image.write_bytes(bytes(build([c, t, *objs_chain], c.oid)))
    limit = 4 * len(text)  # the base and two links fit, the last links do not
    from docteur_core.blockdev.block import FileDevice
    with FileDevice(image) as device:
        assert verify_image(device).ok
        report = verify_image(device, max_lookup_bytes=limit)
    assert not report.ok
    assert any("max_lookup_bytes" in line for line in report.problem_lines())
    refused = docteur("cat", "--max-lookup-bytes", limit, image, "f5.txt")
    assert refused.returncode == 1 and b"max_lookup_bytes" in refused.stderr
    read = docteur("cat", "--max-lookup-bytes", limit, image, "f1.txt")
    assert read.returncode == 0 and read.stdout == objs_chain[1].data
