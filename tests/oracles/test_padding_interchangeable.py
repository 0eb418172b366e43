"""Issue 2: images "stay interchangeable" with the OCaml docteur, whose
padding after the PACK and after the IDX is 1..block_size zero bytes: a
region that already ends on a block boundary still gets a whole block.

layout.image_layout encodes the rule and test_format checks it on numbers;
but a builder that computed its own layout would only differ from it on
the rare image whose regions end exactly on a boundary, which random
sources almost never produce. This builds one on purpose: 108 objects give
an IDX of exactly 4096 bytes, and a filler file's length is tuned until
28 + the PACK is a multiple of 512. The expected offsets are written out
here from the rule, not taken from `layout`.
"""

from __future__ import annotations

import pytest
import random
from pathlib import Path

from docteur_core.make import make_image
from tests.helpers.gitoracle import (check_image, image_listing, pack_end, source_listing,
                                     without_path_index)

pytestmark = [pytest.mark.oracle]

BLOCK = 512
DATE = "2026-01-01T00:00:00Z"


def test_regions_ending_on_a_block_boundary_get_a_whole_block_of_zeros(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(105):  # + filler + root tree + commit = 108 objects
        (src / f"f{i:03d}").write_text(f"file {i}\n")
    filler = random.Random(5).randbytes(6000)  # incompressible: +1 byte in, +1 byte out
    length = 3000
    for _attempt in range(6):
        (src / "filler").write_bytes(filler[:length])
        image = tmp_path / "aligned.img"
        make_image(src, image, date=DATE)
        data = without_path_index(image.read_bytes())
        idx_offset = int.from_bytes(data[20:28], "little")
        end = pack_end(data, idx_offset, BLOCK)
        if end % BLOCK == 0:
            break
        length += BLOCK - end % BLOCK
    else:
        raise AssertionError("could not make a PACK that ends on a block boundary")

    assert idx_offset == end + BLOCK  # a whole block of zeros, not none
    assert data[end:idx_offset] == bytes(BLOCK)
    idx_size = 8 + 4 * 256 + 108 * (20 + 4 + 4) + 20 + 20
    assert idx_size == 4096
    assert len(data) == idx_offset + idx_size + BLOCK  # again a whole block
    assert data[-BLOCK:] == bytes(BLOCK)
    checked = check_image(image, tmp_path)
    assert checked.objects == 108
    assert image_listing(checked.git_dir, checked.commit) == source_listing(Path(src))
