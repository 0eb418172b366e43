"""The scan's fast path must change nothing but the time it takes.

`_inflate_whole` inflates an entry in one call when the IDX gives its end;
anything unusual (a damaged stream, one that ends early or late) goes to
the careful path, `_inflate_stream`. The report must be the same either
way, problem for problem, on damaged images as on intact ones.
"""

from __future__ import annotations

import random
import zlib

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.make import make_image
from docteur_core.verify import scan, verify_image

from tests.helpers.forge import Obj, build, simple


def both_ways(data: bytes, monkeypatch) -> tuple[tuple, tuple]:
    """(problems, warnings, counts) with the whole-entry path, then without it."""
    fast = verify_image(MemoryDevice(data))
    with monkeypatch.context() as m:
        m.setattr(scan, "WHOLE_ENTRY", 0)
        slow = verify_image(MemoryDevice(data))
    return ((fast.problems, fast.warnings, fast.counts.__dict__),
            (slow.problems, slow.warnings, slow.counts.__dict__))


@pytest.fixture(scope="module")
def made_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    rnd = random.Random(3)
    words = [bytes(rnd.choice(b"abcdef ") for _ in range(6)) for _ in range(100)]
    text = b"\n".join(rnd.choice(words) for _ in range(300))
    for i in range(12):
        at = rnd.randrange(len(text))
        edited = text[:at] + rnd.choice(words) + text[at:]
        (root / f"f{i}.txt").write_bytes(bytes(edited) + bytes([i]))
    out = tmp_path_factory.mktemp("img") / "a.img"
    make_image(root, out, date="2020-01-01T00:00:00Z", message="m\n")
    return out.read_bytes()


def test_flips_give_the_same_report_either_way(made_image, monkeypatch):
    data = made_image
    end = int.from_bytes(data[20:28], "little")  # the IDX offset: flip in the pack
    rnd = random.Random(5)
    report = verify_image(MemoryDevice(data))
    assert report.ok and report.counts.deltas > 0
    for off in rnd.sample(range(28, end), 60):
        damaged = bytearray(data)
        damaged[off] ^= rnd.choice([0x01, 0x80, 0xFF])
        fast, slow = both_ways(bytes(damaged), monkeypatch)
        assert fast == slow, off


class Gap(Obj):
    """An entry with bytes between its zlib stream and the next entry."""

    def entry(self) -> bytes:
        return super().entry() + b"\0junk"


def test_bytes_after_a_stream_are_found_either_way(monkeypatch):
    objs, cid = simple({"a": Gap("blob", b"a" * 100), "b": Obj("blob", b"b" * 50)})
    fast, slow = both_ways(bytes(build(objs, cid)), monkeypatch)
    assert fast == slow
    assert fast[0]  # reported


def test_stream_ending_early_or_late_is_found_either_way(monkeypatch):
    short = Obj("blob", b"x" * 64, size=65)
    objs, cid = simple({"a": short, "b": Obj("blob", zlib.compress(b"y") * 3)})
    fast, slow = both_ways(bytes(build(objs, cid)), monkeypatch)
    assert fast == slow and fast[0]


def test_one_damaged_fanout_entry_is_one_problem(tmp_path):
    """A fanout entry flipped high used to be reported once per later entry."""
    import struct

    from docteur_core.format import layout
    from docteur_core.blockdev.block import MemoryDevice
    from docteur_core.verify import verify_image

    from tests.helpers.support import git_reference_image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_text(f"file {i}\n")
    info = git_reference_image(src, tmp_path / "a.img")
    data = bytearray((tmp_path / "a.img").read_bytes())
    at = info["idx_offset"] + layout.IDX_HEADER_SIZE + 4 * 100
    struct.pack_into(">I", data, at, struct.unpack_from(">I", data, at)[0] | 0x00800000)
    report = verify_image(MemoryDevice(bytes(data)))
    fanout = [p for p in report.problems if p[0] == "IDX fanout"]
    assert [p[2] for p in fanout] == [
        "IDX fanout decreases at entry 101 (8388629 then 21)",
        "IDX fanout entry 100 says 8388629, the ids say 21"], report.problem_lines()
