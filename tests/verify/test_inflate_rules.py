"""verify holds every pack entry's stream to the shared inflater's rules
(format/inflate.py), on every path: a small entry inflated in one call, a
large one streamed and hashed as it inflates, the head of a large commit in
quick mode. The same damage gets the same words whichever path read it."""

from __future__ import annotations

import zlib

import pytest

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.verify import STREAM_THRESHOLD, verify_image
from docteur_core.verify.state import COMMIT_HEAD

from tests.helpers.forge import Obj, build, commit, tree


def _image(blob: Obj) -> bytearray:
    t = Obj("tree", tree(("100644", "f", blob.oid)))
    c = Obj("commit", commit(t.oid))
    return build([c, t, blob], c.oid)


@pytest.mark.parametrize("size", [1000, STREAM_THRESHOLD + 1000],
                         ids=["one-call", "streamed"])
def test_a_stream_longer_than_declared_is_named_so_on_every_path(size):
    """A blob declaring 100 bytes less than its stream holds, the stream's
    checksum damaged too: no path inflates past the declared size + 1 to
    find the checksum, so all say the stream is too long (the streamed path
    used to read on, 64 KiB at a time, and report the checksum instead)."""
    content = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    image = _image(Obj("blob", content, size=size - 100))
    stream = zlib.compress(content)
    image[image.index(stream) + len(stream) - 1] ^= 0x01  # its adler-32's last byte
    report = verify_image(MemoryDevice(bytes(image)))
    whats = [p[2] for p in report.problems]
    assert f"inflates to more than the declared {size - 100} bytes" in whats, whats
    assert not any("bad zlib stream" in w for w in whats), whats


def test_quick_holds_a_large_commit_to_its_declared_size():
    """A commit declaring more than quick mode inflates of it (COMMIT_HEAD)
    whose stream ends before that: quick mode reads only the head, yet the
    stream ended within it at the wrong size, which it says (as full does)."""
    body = commit(b"\0" * 20, "m" * (COMMIT_HEAD // 2))
    c = Obj("commit", body, size=COMMIT_HEAD + 10)
    image = bytes(build([c], c.oid))
    what = f"inflates to {len(body)} bytes, {COMMIT_HEAD + 10} declared"
    for quick in (True, False):
        report = verify_image(MemoryDevice(image), quick=quick)
        assert what in [p[2] for p in report.problems], (quick, report.problem_lines())
        assert not report.ok


def test_quick_reads_only_the_head_of_a_large_commit():
    """A commit larger than COMMIT_HEAD, intact: quick mode shows its head
    and is content."""
    body = commit(b"\0" * 20, "m" * (COMMIT_HEAD + 1000))
    c = Obj("commit", body)
    report = verify_image(MemoryDevice(bytes(build([c], c.oid))), quick=True)
    assert report.ok, report.problem_lines()
    assert report.message is not None and report.message.startswith("mmm")
