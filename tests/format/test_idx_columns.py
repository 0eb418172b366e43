"""encode_idx_columns (the builder's .idx from columns) gives encode_idx_v2's bytes,
and refuses an id given twice; git reads what it writes."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.format.idx import encode_idx_columns, encode_idx_v2

entries = st.lists(
    st.tuples(st.binary(min_size=20, max_size=20),
              st.one_of(st.integers(0, 0x7FFFFFFF), st.integers(0x80000000, 1 << 40)),
              st.integers(0, 0xFFFFFFFF)),
    max_size=300, unique_by=lambda e: e[0])


def columns(es):
    return (b"".join(s for s, _, _ in es), array("Q", [o for _, o, _ in es]),
            array("I", [c for _, _, c in es]))


@settings(max_examples=200, deadline=None)
@given(entries, st.binary(min_size=20, max_size=20))
def test_same_bytes_as_the_list_encoder(es, checksum):
    assert encode_idx_columns(*columns(es), checksum) == encode_idx_v2(es, checksum)


@given(entries.filter(bool), st.data())
def test_an_id_twice_is_refused(es, data):
    twice = data.draw(st.sampled_from(es))
    with pytest.raises(ValueError, match="twice"):
        encode_idx_columns(*columns(es + [(twice[0], 1, 2)]), bytes(20))


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        encode_idx_columns(bytes(40), array("Q", [1]), array("I", [1, 2]), bytes(20))
