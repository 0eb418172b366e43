"""No reader returns a wrong byte, whatever the image's source says (issue 21).

Every reader (`cat`, `extract`, the guest entry point, `mount`, a QEMU
guest) is run as users run it, on images served by sources that lie on
purpose (tests/helpers/liars.py: an NBD server and an HTTP origin of this project's
own) and on forged files:

- another valid image of the same size (a different commit), served under
  the pinned one's name;
- a forgery that keeps the commit id: one blob re-deflated to other bytes
  of the same size, its IDX CRC-32 fixed (forge.rewrite_object);
- a repointed entry: the path index entry of a file (node CRC-32 fixed),
  or, in an image without a path index, its IDX offset and CRC-32, sent to
  another file of the same size;
- a source that switches from the right image to another after a few reads.

The rule checked is the same everywhere: a reader either returns exactly
the bytes of the commit it was pinned to (or, unpinned, the one the header
it read names), or fails with one line and returns nothing of that file.
`--no-verify` runs show that each forgery is real: there, the wrong bytes
do come through.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.make import make_image
from docteur_core.reader import Image

from tests.helpers.forge import rewrite_object
from tests.helpers.liars import LyingHttp, LyingNbd, Policy
from tests.helpers.mounts import Mounts

DOCTEUR = [sys.executable, "-m", "docteur_core"]
GUEST = [sys.executable, "-S", "-m", "docteur_core.reader.guest"]
DATE = "2025-05-05T05:05:05Z"
MODES = ("light", "fast")
FILES = ("a.txt", "dir/b.bin", "dir/sub/c.bin")


def _source(root: Path, seed: int) -> dict[str, bytes]:
    """Files of fixed sizes, random bytes (so no deltas, and two sources of
    different seeds make images of the same size)."""
    rnd = random.Random(seed)
    files = {"a.txt": b"hello %d\n" % seed,
             "dir/b.bin": rnd.randbytes(3000),
             "dir/sub/c.bin": rnd.randbytes(3000)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _entry_of(image: bytes, path: str) -> tuple[bytes, int, int]:
    """(id, absolute offset, IDX CRC-32) of a file's object."""
    with Image.open(MemoryDevice(image), "light", verify=False, path_index=False) as img:
        oid = bytes.fromhex(img.digest(path))
        offset, crc = img.store.locate(oid)
    return oid, offset, crc


def _repointed_index(image: bytes, path: str, to: str) -> bytes:
    """The path index entry of `path` points at `to`'s object (offset and
    IDX position), every checksum of the region sealed again."""
    from tests.helpers.forge import rebuilt_path_index

    oid, _, _ = _entry_of(image, path)
    other, offset, _ = _entry_of(image, to)
    with Image.open(MemoryDevice(image), "light", verify=False, path_index=False) as img:
        idx = img.store.idx
        names = [img.store.pread(idx.name_at(i), 20) for i in range(idx.count)]
    forged = rebuilt_path_index(image, {oid: offset}, {oid: names.index(other)})
    assert len(forged) == len(image)
    return forged


def _repointed_idx(image: bytes, path: str, to: str) -> bytes:
    """The IDX rows of `path`'s and `to`'s objects swap their offsets and
    CRC-32s (each id then names the other's entry)."""
    from docteur_core.format import layout

    oid, _, _ = _entry_of(image, path)
    other_id, _, _ = _entry_of(image, to)
    data = bytearray(image)
    idx = layout.parse_header(image, len(image)).idx_offset
    count = struct.unpack_from(">I", image, idx + 8 + 1020)[0]
    names = idx + 8 + 1024
    rows = [image[names + 20 * i:names + 20 * i + 20] for i in range(count)]
    a, b = rows.index(oid), rows.index(other_id)
    crcs, offs = names + 20 * count, names + 24 * count
    for table in (crcs, offs):
        data[table + 4 * a:table + 4 * a + 4] = image[table + 4 * b:table + 4 * b + 4]
        data[table + 4 * b:table + 4 * b + 4] = image[table + 4 * a:table + 4 * a + 4]
    return bytes(data)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """{name: (bytes, truth)} for the good image A, another image B of the
    same size, and A's forgeries, with and without a path index."""
    out = {}
    tmp = tmp_path_factory.mktemp("lying")
    for pix_on in (True, False):
        made = {}
        for name, seed in (("A", 1), ("B", 2)):
            src = tmp / f"{name}{pix_on}"
            src.mkdir()
            files = _source(src, seed)
            img = tmp / f"{name}{pix_on}.img"
            make_image(src, img, date=DATE, path_index=pix_on, warn=lambda w: None)
            made[name] = (img.read_bytes(), files)
        a, truth = made["A"]
        assert len(a) == len(made["B"][0]), "A and B must be the same size"
        forged_b = bytes(reversed(truth["dir/b.bin"]))
        oid, _, _ = _entry_of(a, "dir/b.bin")
        blob = bytes(rewrite_object(a, oid, forged_b))
        repoint = (_repointed_index if pix_on else _repointed_idx)(a, "dir/b.bin",
                                                                    "dir/sub/c.bin")
        key = "pix" if pix_on else "nopix"
        out[key] = {"A": made["A"], "B": made["B"], "blob": (blob, truth),
                    "repoint": (repoint, truth), "forged_b": forged_b}
    return out


def _commit(image: bytes) -> str:
    return image[:20].hex()


def run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def right_or_nothing(proc: subprocess.CompletedProcess, want: bytes, what: str) -> bool:
    """The reader gave exactly `want`, or failed in one line giving nothing.
    True if it gave the bytes."""
    err = proc.stderr.decode(errors="replace")
    if proc.returncode == 0:
        assert proc.stdout == want, f"{what}: WRONG BYTES: {proc.stdout[:60]!r}"
        return True
    assert proc.returncode == 1, f"{what}: exit {proc.returncode}: {err}"
    assert proc.stdout == b"", f"{what}: failed after writing {len(proc.stdout)} bytes"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, f"{what}: {err}"
    return False


def refused(proc: subprocess.CompletedProcess, what: str, *words: str) -> None:
    assert not right_or_nothing(proc, b"\0never", what), f"{what}: read"
    for word in words:
        assert word in proc.stderr.decode(errors="replace"), (what, proc.stderr)


def readers(source: str, path: str, mode: str, *flags: str):
    """(name, command) of the readers that print one file."""
    yield "cat", [*DOCTEUR, "cat", "--mode", mode, *flags, source, path]
    yield "guest", [*GUEST, source, "--mode", mode, *flags, "cat", path]


def sources(image: bytes, tmp: Path, name: str):
    """The image as a file, from a lying NBD server, from a lying HTTP
    origin (each serving these bytes honestly: the lie is in the bytes)."""
    f = tmp / f"{name}.img"
    f.write_bytes(image)
    yield "file", str(f), None
    with LyingNbd(Policy.always(image)) as uri:
        yield "nbd", uri, None
    with LyingHttp(Policy.always(image)) as url:
        yield "http", url, None


# -- forgeries that keep the commit id ---------------------------------------------


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("index", ["pix", "nopix"])
@pytest.mark.parametrize("forgery", ["blob", "repoint"])
def test_a_forgery_keeping_the_commit_id_gives_no_wrong_byte(images, tmp_path, index, forgery):
    image, truth = images[index][forgery]
    pin = _commit(images[index]["A"][0])
    for kind, source, _ in sources(image, tmp_path, f"{forgery}-{index}"):
        for mode in MODES:
            for flags in ((), ("--commit", pin)):
                for name, cmd in readers(source, "dir/b.bin", mode, *flags):
                    what = f"{forgery} {index} {kind} {mode} {name} {flags}"
                    refused(run(cmd), what, "SHA-1 mismatch")
                for name, cmd in readers(source, "a.txt", mode, *flags):
                    assert right_or_nothing(run(cmd), truth["a.txt"], name), (kind, mode)
    # The forgery is real: unverified, the wrong bytes come through.
    f = tmp_path / "real.img"
    f.write_bytes(image)
    proc = run([*DOCTEUR, "cat", "--no-verify", "--mode", "light", f, "dir/b.bin"])
    assert proc.returncode == 0 and proc.stdout != truth["dir/b.bin"]
    assert proc.stdout in (images[index]["forged_b"], truth["dir/sub/c.bin"])


@pytest.mark.parametrize("index", ["pix", "nopix"])
def test_extract_writes_no_wrong_byte(images, tmp_path, index):
    for forgery in ("blob", "repoint"):
        image, truth = images[index][forgery]
        f = tmp_path / f"{forgery}.img"
        f.write_bytes(image)
        for mode in MODES:
            dest = tmp_path / f"out-{forgery}-{mode}"
            proc = run([*DOCTEUR, "extract", "--mode", mode, f, dest])
            assert proc.returncode == 1 and b"SHA-1 mismatch" in proc.stderr, proc.stderr
            for path in (p for p in dest.rglob("*") if p.is_file()):
                rel = path.relative_to(dest).as_posix()
                assert path.read_bytes() == truth[rel], f"{forgery} {mode}: {rel} WRONG"
            assert not (dest / "dir/b.bin").exists()


# -- another image, served under the pinned one's name -------------------------------


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("index", ["pix", "nopix"])
def test_another_image_of_the_same_size_is_refused_under_a_pin(images, tmp_path, index):
    a, truth = images[index]["A"]
    b, truth_b = images[index]["B"]
    pin = _commit(a)
    for kind, source, _ in sources(b, tmp_path, f"B-{index}"):
        for mode in MODES:
            for name, cmd in readers(source, "dir/b.bin", mode, "--commit", pin):
                refused(run(cmd), f"{kind} {mode} {name}", "wrong image", pin)
            # Unpinned, B is read as B: its own bytes, checked against its header.
            for name, cmd in readers(source, "dir/b.bin", mode):
                assert right_or_nothing(run(cmd), truth_b["dir/b.bin"], name)
        proc = run([*DOCTEUR, "extract", "--commit", pin, source, tmp_path / f"x-{kind}"])
        refused(proc, f"extract {kind}", "wrong image")
        assert not (tmp_path / f"x-{kind}").exists()


def test_an_origin_named_for_its_commit_pins_it(images, tmp_path):
    a, _ = images["pix"]["A"]
    b, truth_b = images["pix"]["B"]
    with LyingHttp(Policy.always(b), name=f"{_commit(a)}.img") as url:
        refused(run([*DOCTEUR, "cat", url, "a.txt"]), "ID.img", "wrong image")
        # --commit says otherwise: B pinned by its own id is read.
        proc = run([*DOCTEUR, "cat", "--commit", _commit(b), url, "a.txt"])
        assert right_or_nothing(proc, truth_b["a.txt"], "--commit B")


# -- a source that switches images in the middle of a session -------------------------


@pytest.mark.parametrize("index", ["pix", "nopix"])
@pytest.mark.slow  # 11 s of CPU a case: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("afters", [pytest.param((3,), id="after3"),
                                    pytest.param((1, 2, 5, 8), id="after1258")])
def test_a_switch_mid_session_gives_no_wrong_byte(images, tmp_path, index, afters):
    a, truth = images[index]["A"]
    b, _ = images[index]["B"]
    pin = _commit(a)
    read = refused_count = 0
    for after in afters:
        for mode in MODES:
            for path in FILES:
                for flags in ((), ("--commit", pin)):
                    for reader in ("cat", "guest"):  # a server each: A first, then B
                        with LyingNbd(Policy.switch(a, b, after=after)) as uri:
                            name, cmd = next(r for r in readers(uri, path, mode, *flags)
                                             if r[0] == reader)
                            if right_or_nothing(run(cmd), truth[path], f"nbd {after} {name}"):
                                read += 1
                            else:
                                refused_count += 1
                    with LyingHttp(Policy.switch(a, b, after=after)) as url:
                        proc = run([*DOCTEUR, "cat", "--mode", mode, *flags, url, path],
                                   env={"DOCTEUR_HTTP_CHUNK": "512"})
                        if right_or_nothing(proc, truth[path], f"http {after} {mode}"):
                            read += 1
                        else:
                            refused_count += 1
    assert refused_count, "no switch landed inside a read: the test proves nothing"


# -- mount -------------------------------------------------------------------------------


@pytest.fixture
def mounts():
    made = Mounts()
    yield made
    made.cleanup()


def _read_all(root: Path) -> dict[str, bytes | OSError]:
    out: dict[str, bytes | OSError] = {}
    for path in FILES:
        try:
            out[path] = (root / path).read_bytes()
        except OSError as exc:
            out[path] = exc
    return out


@pytest.mark.fuse
@pytest.mark.parametrize("index", ["pix", "nopix"])
@pytest.mark.parametrize("mode", MODES)
def test_a_mount_gives_eio_never_a_wrong_byte(images, tmp_path, mounts, index, mode):
    import errno

    for forgery in ("blob", "repoint"):
        image, truth = images[index][forgery]
        f = tmp_path / f"{forgery}.img"
        f.write_bytes(image)
        mnt = tmp_path / f"mnt-{forgery}"
        mnt.mkdir()
        mounts.mount(f, mnt, "--mode", mode)
        got = _read_all(mnt)
        # The IDX repointing swaps b's and c's rows: both are forged then.
        forged = {"dir/b.bin"} | ({"dir/sub/c.bin"} if (forgery, index) == ("repoint", "nopix")
                                  else set())
        for path in FILES:
            if path in forged:
                assert isinstance(got[path], OSError) and got[path].errno == errno.EIO, path
            else:
                assert got[path] == truth[path], path
    # Another image behind a lying NBD server: a pinned mount refuses to mount.
    a, _ = images[index]["A"]
    b, _ = images[index]["B"]
    with LyingNbd(Policy.always(b)) as uri:
        mnt = tmp_path / "mnt-b"
        mnt.mkdir()
        proc = run([*DOCTEUR, "mount", "--commit", _commit(a), "--mode", mode, uri, mnt])
        refused(proc, "mount B pinned A", "wrong image")
        assert not os.path.ismount(mnt)
    # A switch while mounted: each file is A's, or EIO.
    a_truth = images[index]["A"][1]
    with LyingNbd(Policy.switch(a, b, after=6)) as uri:
        mnt = tmp_path / "mnt-switch"
        mnt.mkdir()
        mounts.mount(uri, mnt, "--mode", mode)
        for path, got in _read_all(mnt).items():
            assert isinstance(got, OSError) or got == a_truth[path], f"{path} WRONG"


# -- a large file: checked before a byte leaves -----------------------------------------


def _flipped_in_place(image: bytes, path: str, data: bytes, at: int) -> bytes:
    """The image with byte `at` of `path`'s content changed in its zlib
    stream, which holds random bytes as they are (stored blocks), its
    Adler-32 and IDX CRC-32 fixed: a forgery of the same size that only
    the SHA-1 can tell, made without re-deflating 16 MiB."""
    from docteur_core.format.pack import MAX_ENTRY_HEADER, parse_entry_header

    oid, offset, _ = _entry_of(image, path)
    head = parse_entry_header(image[offset:offset + MAX_ENTRY_HEADER], "t")
    start = offset + head.header_len
    z = zlib.decompressobj()
    assert z.decompress(image[start:start + len(data) + (1 << 20)]) == data
    end = start + len(image[start:start + len(data) + (1 << 20)]) - len(z.unused_data)
    window = data[at - 32:at + 32]
    where = image.index(window, start, end) + 32
    out = bytearray(image)
    out[where] ^= 0xFF
    changed = bytearray(data)
    changed[at] ^= 0xFF
    struct.pack_into(">I", out, end - 4, zlib.adler32(bytes(changed)))
    assert zlib.decompress(bytes(out[start:end])) == bytes(changed)
    from docteur_core.format import layout

    idx = layout.parse_header(image, len(image)).idx_offset
    count = struct.unpack_from(">I", image, idx + 8 + 1020)[0]
    names = idx + 8 + 1024
    row = [image[names + 20 * i:names + 20 * i + 20] for i in range(count)].index(oid)
    struct.pack_into(">I", out, names + 20 * count + 4 * row, zlib.crc32(bytes(out[offset:end])))
    return bytes(out)



@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_a_large_forged_file_leaves_nothing_on_stdout(tmp_path):
    """A file over the streaming threshold (16 MiB), stored whole and
    forged in place: `cat` hashes it before writing (it used to write all
    of it, then fail), `extract` leaves no file, a mount's read at any
    offset is EIO."""
    from docteur_core.format.limits import STREAM_THRESHOLD

    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(7).randbytes(STREAM_THRESHOLD + 4096)
    (src / "big.bin").write_bytes(data)
    img = tmp_path / "big.img"
    make_image(src, img, date=DATE, warn=lambda w: None)
    image = img.read_bytes()
    forged = tmp_path / "forged.img"
    forged.write_bytes(_flipped_in_place(image, "big.bin", data, len(data) - 100))
    for mode in MODES:
        refused(run([*DOCTEUR, "cat", "--mode", mode, forged, "big.bin"]), "cat big",
                "SHA-1 mismatch")
        refused(run([*GUEST, forged, "--mode", mode, "cat", "big.bin"]), "guest big",
                "SHA-1 mismatch")
    proc = run([*DOCTEUR, "extract", forged, tmp_path / "out"])
    assert proc.returncode == 1 and not (tmp_path / "out" / "big.bin").exists()
    assert right_or_nothing(run([*DOCTEUR, "cat", img, "big.bin"]), data, "the good one")
    with Image.open(forged) as opened:
        for offset in (0, 5 << 20, len(data) - 10):
            with pytest.raises(Exception, match="SHA-1 mismatch"):
                opened.get_partial("big.bin", offset, 4096)


# -- a QEMU guest ---------------------------------------------------------------------------


@pytest.mark.nbdkit
@pytest.mark.qemu
def test_a_qemu_guest_returns_no_wrong_byte(images, tmp_path):
    """One boot runs every command: the forged blob (served as it is by
    nbdkit's file plugin: the project's own plugin refuses it at start-up)
    and, over a lying NBD server that switches images, a pinned read."""
    from docteur_core.boot import runner as boot

    image, truth = images["pix"]["blob"]
    forged = tmp_path / "forged.img"
    forged.write_bytes(image)
    pin = _commit(images["pix"]["A"][0])
    commands = [boot.reader_command(["cat", "dir/b.bin"], mode, commit=commit)
                for mode in MODES for commit in (None, pin)]
    commands.append(boot.reader_command(["cat", "a.txt"], "light"))
    result = boot.boot(forged, commands, server="file", timeout=600)
    for r in result.results[:-1]:
        assert (r.status, r.stdout) == (1, b""), r
        assert b"SHA-1 mismatch" in r.stderr and len(r.stderr.splitlines()) == 1, r
    assert (result.results[-1].status, result.results[-1].stdout) == (0, truth["a.txt"])
    a, b = images["pix"]["A"][0], images["pix"]["B"][0]
    with LyingNbd(Policy.always(b)) as uri:
        result = boot.boot(uri, [boot.reader_command(["cat", "a.txt"], "light", commit=pin)],
                           timeout=600)
    r = result.results[0]
    assert (r.status, r.stdout) == (1, b"") and b"wrong image" in r.stderr, r
