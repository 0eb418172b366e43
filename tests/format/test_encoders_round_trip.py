"""The zlib encoders of `--compress max|zopfli` write streams that plain zlib
inflates back to the input, the same stream every time, and refuse levels
their libraries do not have."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docteur_core.format.encoders import LIBDEFLATE, ZOPFLI, Encoder

CONTENT = st.one_of(st.binary(max_size=4000),
                    st.lists(st.sampled_from([b"def ", b"return ", b"self", b"\n", b"    ",
                                              b"import os", b"(", b")"]),
                             max_size=400).map(b"".join))


@given(CONTENT, st.integers(1, 12))
@settings(max_examples=200, deadline=None)
def test_libdeflate_streams_inflate_back_and_repeat(content, level):
    encoder = Encoder(LIBDEFLATE, level)
    stream = encoder.compress(content)
    assert type(stream) is bytes
    d = zlib.decompressobj()
    assert d.decompress(stream) == content and d.eof and not d.unused_data
    assert encoder.compress(content) == stream


@given(CONTENT, st.integers(1, 3))
@settings(max_examples=30, deadline=None)
def test_zopfli_streams_inflate_back_and_repeat(content, iterations):
    encoder = Encoder(ZOPFLI, iterations)
    stream = encoder.compress(content)
    assert zlib.decompress(stream) == content
    assert encoder.compress(content) == stream


def test_level_12_beats_git_zlib_on_source_text():
    text = b"".join(b"def f%d(x):\n    return x * %d + %d\n" % (i, i % 7, i % 13)
                    for i in range(3000))
    assert len(Encoder(LIBDEFLATE, 12).compress(text)) < len(zlib.compress(text, 6))


@pytest.mark.parametrize("library,level", [(LIBDEFLATE, 0), (LIBDEFLATE, 13), (ZOPFLI, 0),
                                           ("gzip", 6)])
def test_unknown_levels_and_libraries_are_refused(library, level):
    with pytest.raises(ValueError):
        Encoder(library, level)


def test_the_test_extra_installs_both_libraries():
    """A missing library would make the other tests fail, not skip; this says which."""
    assert Encoder(LIBDEFLATE, 12).missing() is None
    assert Encoder(ZOPFLI, 1).missing() is None
