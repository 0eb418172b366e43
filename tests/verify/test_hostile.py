"""`docteur verify` of hostile images: whatever the bytes say, the answer is
the report (problem lines, then one line saying the image is damaged, or a
valid `--json` report), never a traceback, and its memory does not grow
with what a hostile image asks it to hold. Issue 21, point 5.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.format.pack import OBJ_OFS_DELTA
from docteur_core.verify import verify_image

from tests.helpers.forge import Obj, build, commit, make_delta, tree, with_large_offsets
from tests.helpers.support import REPO_ROOT

TIMEOUT = 300


def docteur(*args, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, timeout=TIMEOUT, cwd=REPO_ROOT,
                          preexec_fn=preexec_fn)


def delta_image() -> tuple[bytearray, list[Obj]]:
    """A commit, its tree, a blob and a delta on it (OFS_DELTA): the objects
    in pack order, whose `offset` is their place in the PACK."""
    text = b"hello world\n" * 50
    base = Obj("blob", text)
    delta = Obj("blob", text + b"more\n", ofs_base=base,
                delta=make_delta(text, text + b"more\n"))
    small = Obj("blob", b"small\n")
    t = Obj("tree", tree(("100644", "a", base.oid), ("100644", "b", delta.oid),
                         ("100644", "c", small.oid)))
    c = Obj("commit", commit(t.oid))
    objs = [c, t, base, delta, small]
    return build(objs, c.oid), objs


def idx_rows(image: bytes | bytearray) -> tuple[int, int]:
    """(where the IDX's 32-bit offset table starts, how many rows)."""
    at = struct.unpack_from("<Q", image, 20)[0]
    count = struct.unpack_from(">I", image, at + 8 + 4 * 255)[0]
    return at + 1032 + 24 * count, count


def assert_damage_reported(image: Path, *regions: str) -> None:
    """verify and verify --json both say the image is damaged, in the
    regions named, as a report: no traceback, exit 1, valid JSON."""
    text = docteur("verify", image)
    err = text.stderr.decode(errors="replace")
    assert text.returncode == 1 and text.stdout == b"", err
    assert "Traceback" not in err and "Error:" not in err, err
    lines = err.splitlines()
    assert lines[-1] == f"docteur verify: {image} is damaged: {len(lines) - 1} problem" \
        + ("s" if len(lines) != 2 else "") + " found", lines
    for region in regions:
        assert any(line.startswith(f"{region}: ") for line in lines[:-1]), lines
    as_json = docteur("verify", "--json", image)
    err = as_json.stderr.decode(errors="replace")
    assert as_json.returncode == 1 and "Traceback" not in err, err
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert {p["region"] for p in report["problems"]} >= set(regions), report["problems"]


@pytest.mark.parametrize("value", [2**64 - 1, 2**64 - 28, 2**64 - 27, 2**63, 1 << 40])
def test_a_64_bit_offset_past_the_image_is_a_problem(value, tmp_path):
    """An IDX row in the 64-bit table pointing anywhere up to 2**64 - 1 (where
    adding the PACK's 28 bytes overflowed an unsigned 64-bit array) is an
    'IDX offsets' problem naming that offset, in every row."""
    image, objs = delta_image()
    _, count = idx_rows(image)
    for row in range(count):
        forged = with_large_offsets(image, {row: value})
        report = verify_image(MemoryDevice(bytes(forged)))
        assert not report.ok
        assert any(p[0] == "IDX offsets" and f"pack offset {value}" in p[2]
                   for p in report.problems), report.problem_lines()
    path = tmp_path / "far.img"
    path.write_bytes(bytes(with_large_offsets(image, {0: value})))
    assert_damage_reported(path, "IDX offsets")


def test_the_64_bit_table_read_right_verifies():
    """The forged table itself is sound: every row moved there, with the
    true offsets, verifies (so the test above fails for its lie alone)."""
    image, objs = delta_image()
    start, count = idx_rows(image)
    true = struct.unpack_from(f">{count}I", image, start)
    report = verify_image(MemoryDevice(bytes(with_large_offsets(image, dict(enumerate(true))))))
    assert report.ok, report.problem_lines()


def test_two_flips_a_high_bit_and_a_delta_base(tmp_path):
    """Two bit flips: the high bit of a 32-bit IDX offset (which then points
    into a 64-bit table the IDX does not have, so the scan runs without its
    fast lane) and the size in the header of a delta's base (the base is
    then damaged). The delta's base used to be looked up in the missing
    lane: a TypeError from `_lane_info` (now `Entries.lane_record`)."""
    image, objs = delta_image()
    start, count = idx_rows(image)
    base = 28 + objs[2].offset
    for row in range(count):
        damaged = bytearray(image)
        damaged[start + 4 * row] ^= 0x80
        damaged[base] ^= 0x01
        report = verify_image(MemoryDevice(bytes(damaged)))
        assert not report.ok
        assert any(p[1] == f"offset {base}" for p in report.problems), report.problem_lines()
        assert any(p[0] == "IDX offsets" for p in report.problems), report.problem_lines()
    path = tmp_path / "flipped.img"
    path.write_bytes(bytes(damaged))
    assert_damage_reported(path, "IDX offsets")


def test_commit_header_lines_over_the_readers_limit_are_a_problem(tmp_path):
    """verify keeps only the head of a commit (its header lines and what it
    shows of the message): header lines longer than the readers read at
    open (MAX_COMMIT_HEADER) are a problem, as the readers refuse them."""
    from docteur_core.errors import LimitExceeded
    from docteur_core.format import limits
    from docteur_core.reader import Image

    blob = Obj("blob", b"f\n")
    t = Obj("tree", tree(("100644", "f", blob.oid)))
    signature = "gpgsig -----BEGIN SSH SIGNATURE-----\n" + " x\n" * (limits.MAX_COMMIT_HEADER // 3)
    c = Obj("commit", commit(t.oid).replace(b"\n\n", f"\n{signature}\n".encode(), 1))
    path = tmp_path / "long-header.img"
    path.write_bytes(bytes(build([c, t, blob], c.oid)))
    with pytest.raises(LimitExceeded, match="header lines"):
        Image.open(path, "light")
    for quick in (False, True):
        with open(path, "rb") as f:
            report = verify_image(MemoryDevice(f.read()), quick=quick)
        assert any(p[0] == "objects" and "header lines are longer" in p[2]
                   for p in report.problems), report.problem_lines()
