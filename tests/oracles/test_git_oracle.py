"""The git oracle of the builder's tests (tests/helpers/gitoracle.py) judged on
images made by git alone: it accepts them and catches a damaged IDX."""

from __future__ import annotations

import pytest

from docteur_core.format import layout
from tests.helpers.gitoracle import SITE, check_image, image_listing, source_listing
from tests.helpers.support import git_reference_image


def test_oracle_accepts_reference_image(tmp_path):
    ref = git_reference_image(SITE, tmp_path / "ref.img")
    checked = check_image(tmp_path / "ref.img", tmp_path)
    assert checked.commit == ref["commit"] and checked.tree == ref["tree"]
    assert image_listing(checked.git_dir, checked.commit) == source_listing(SITE)


def test_oracle_rejects_a_damaged_idx(tmp_path):
    git_reference_image(SITE, tmp_path / "ref.img")
    data = bytearray((tmp_path / "ref.img").read_bytes())
    header = layout.parse_header(bytes(data))
    data[header.idx_offset + 8 + 1024 + 3] ^= 0xFF  # first object id
    (tmp_path / "bad.img").write_bytes(bytes(data))
    with pytest.raises(AssertionError):
        check_image(tmp_path / "bad.img", tmp_path)
