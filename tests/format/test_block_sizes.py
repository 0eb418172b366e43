"""Block sizes from 512 B to 1 GiB: the layout's inverse rules and the plugin's refusals.

The pack trailer is looked for in the padding before the IDX, bounded by the
largest block size the IDX offset and the image size allow (not by a fixed
64 KiB), and a refusal names the real reason. Images with huge paddings are
served here by a sparse pread over a real image's bytes (the regions where
the layout puts them, zeros elsewhere), so a 4 GiB layout costs nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from docteur_core.format import layout
from docteur_core.make import make_image
from docteur_core.serve import imagecheck
from docteur_core.errors import DamagedImage
from tests.helpers.support import REPO_ROOT


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(pack bytes, idx bytes, commit) of a small real image."""
    tmp = tmp_path_factory.mktemp("bs")
    (tmp / "src").mkdir()
    (tmp / "src" / "f").write_text("some file\n" * 20)
    img = tmp / "a.img"
    result = make_image(tmp / "src", img, date="2024-01-01T00:00:00Z", path_index=False)
    data = img.read_bytes()
    header = layout.parse_header(data, len(data))
    idx = data[header.idx_offset:].rstrip(b"\0")
    pack_end, why = layout.locate_pack_trailer(lambda o, n: data[o:o + n], header.idx_offset,
                                               len(data), idx[-40:-20])
    assert why == ""
    return data[layout.PACK_OFFSET:pack_end], idx, bytes.fromhex(result.commit)


def sparse(pack: bytes, idx: bytes, commit: bytes, block_size: int, garbage: bytes = b""):
    """(pread, size) of the image of `pack` and `idx` at `block_size`, zeros not stored."""
    idx_offset, size = layout.image_layout(len(pack), len(idx), block_size)
    head = layout.encode_header(commit, idx_offset) + pack + garbage
    regions = [(0, head), (idx_offset, idx)]

    def pread(offset: int, length: int) -> bytes:
        out = bytearray(max(0, min(length, size - offset)))
        for start, blob in regions:
            lo, hi = max(offset, start), min(offset + len(out), start + len(blob))
            if lo < hi:
                out[lo - offset:hi - offset] = blob[lo - start:hi - start]
        return bytes(out)

    return pread, size


class PreadDevice:
    """The block interface over a pread: what the plugin's check reads through."""

    block_size = 512

    def __init__(self, pread, size: int) -> None:
        self.pread, self.capacity = pread, size

    def read(self, offset: int, length: int) -> bytes:
        assert offset % 512 == 0 and length % 512 == 0
        return self.pread(offset, min(length, self.capacity - offset))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("block_size", [512, 65536, 131072, 1 << 20, pytest.param(
    1 << 30, marks=pytest.mark.slow)])  # 1 GiB: seconds of CPU, out of the quick core
def test_every_block_size_up_to_1_gib_is_checked_in_a_few_reads(small, block_size):
    pack, idx, commit = small
    pread, size = sparse(pack, idx, commit, block_size)
    reads = []

    def counting(offset, length):
        reads.append(length)
        return pread(offset, length)

    info = imagecheck.check_image(PreadDevice(counting, size))
    assert info.commit_hex == commit.hex() and info.block_size == block_size
    assert layout.valid_block_size(block_size)
    # the padding after the pack is scanned, not read in one piece
    assert max(reads) <= max(1 << 20, len(idx)) + 4096


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_block_size_above_1_gib_is_refused_for_what_it_is(small):
    pack, idx, commit = small
    pread, size = sparse(pack, idx, commit, 1 << 31)
    with pytest.raises(DamagedImage) as exc:
        imagecheck.check_image(PreadDevice(pread, size))
    assert "no PACK trailer before the IDX at offset 2147483648" in str(exc.value)
    assert "block sizes above 1073741824 are not supported" in str(exc.value)
    assert not layout.valid_block_size(1 << 31)


def test_damaged_trailer_and_dirty_padding_are_told_apart(small):
    pack, idx, commit = small
    bad = pack[:-1] + bytes([pack[-1] ^ 1])
    pread, size = sparse(bad, idx, commit, 131072)
    with pytest.raises(DamagedImage, match="PACK trailer: pack trailer differs from the "
                                           "pack's SHA-1"):
        imagecheck.check_image(PreadDevice(pread, size))
    pread, size = sparse(pack, idx, commit, 131072, garbage=b"\x01")
    with pytest.raises(DamagedImage, match=r"padding: padding is not zero, offset "
                                           rf"{layout.PACK_OFFSET + len(pack)}"):
        imagecheck.check_image(PreadDevice(pread, size))


def test_make_and_verify_at_128_kib(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("f\n")
    make_image(tmp_path / "src", tmp_path / "a.img", block_size=131072)
    assert (tmp_path / "a.img").stat().st_size == 3 * 131072  # + the path index region
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "verify", "--json",
                           str(tmp_path / "a.img")], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["block_sizes"] == [131072]
