"""The one pack-entry inflater (format/inflate.py) against zlib and its rules.

Whatever the chunking of its input, the limits of its reads, or an early
feed: the output is zlib's own inflate of the stream, `consumed` is the
stream's length (bytes after it ignored, not in the CRC-32), and every
lie is refused in its words: a stream that runs short (truncated, or past
the end it may not cross), one that inflates to more or less than the
declared size (never more than size + 1 bytes built, a bomb included), a
CRC-32 that is not the entry's, a stream that is not zlib.
"""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.errors import DamagedImage
from docteur_core.format import pack
from docteur_core.format.inflate import (EntryInflater, EntryStream, Inflater, inflate_entry,
                                         inflate_from)

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text-like (packs well, long matches), noise (stored blocks), and both.
contents = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from([b"#define X 1\n", b"\x00" * 300, b"abc", b"generated file 7\n"]),
             max_size=400).map(b"".join),
    st.tuples(st.integers(0, 2**32), st.integers(0, 70000)).map(
        lambda t: random.Random(t[0]).randbytes(t[1] // 3) + b"text " * (t[1] // 5)),
)


@st.composite
def entries(draw):
    """(header, stream, content, trailing bytes): an entry as the pack has
    it, and what follows it."""
    content = draw(contents)
    stream = zlib.compress(content, draw(st.integers(0, 9)))
    header = draw(st.binary(min_size=1, max_size=32))
    trailing = draw(st.binary(max_size=64))
    return header, stream, content, trailing


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def drive(inf: EntryInflater, chunks: list[bytes], limit: int, early: list[bool]) -> bytes:
    """Feed `chunks` (sometimes before all the input is read: `early`),
    reading `limit` bytes at a time, until the stream ends or the input
    runs out; every read is checked against its limit and the bound."""
    out = []
    chunks = list(chunks)
    turn = 0
    while not inf.done:
        turn += 1
        feed_now = chunks and (inf.needs_input or early[turn % len(early)])
        if feed_now:
            inf.feed(chunks.pop(0))
            continue
        if inf.needs_input:
            break  # nothing more to give
        piece = inf.read(limit)
        assert len(piece) <= limit
        assert inf.produced <= inf.size
        out.append(piece)
    return b"".join(out)


@given(entries(), st.lists(st.integers(0, 200000), max_size=8), st.integers(1, 70000),
       st.lists(st.booleans(), min_size=1, max_size=5), st.booleans())
@SETTINGS
def test_round_trip_whatever_the_chunking(entry, cuts, limit, early, in_first):
    """The output is zlib's, `consumed` the stream's length, the CRC-32 of
    header and stream (not the trailing bytes) is accepted, bytes after the
    end are ignored."""
    header, stream, content, trailing = entry
    crc = zlib.crc32(header + stream)
    data = stream + trailing
    if in_first:  # the header's read brought the stream's first bytes
        first, data = header + data[:len(data) // 3], data[len(data) // 3:]
    else:
        first = header
    inf = EntryInflater(len(content), "here", crc, first, len(header))
    out = drive(inf, pieces(data, cuts), limit, early)
    assert inf.done
    assert out == content == zlib.decompress(stream)
    assert inf.consumed == len(stream)
    inf.feed(b"after the end")  # ignored
    assert inf.read(10) == b"" and inf.consumed == len(stream)


@given(entries(), st.integers(0, 200000))
@SETTINGS
def test_one_call_form_and_its_continuation(entry, cut):
    """`inflate_entry` on the bytes read with the header: done in one call
    when they hold the stream, else an inflater that goes on from there;
    the same result either way."""
    header, stream, content, trailing = entry
    crc = zlib.crc32(header + stream)
    whole = header + stream + trailing
    cut = len(header) + cut % (len(stream) + len(trailing) + 1)
    out, length, inf = inflate_entry(whole[:cut], len(header), len(content), "here", crc)
    if inf is None:
        assert cut >= len(header) + len(stream)
        assert out == content and length == len(header) + len(stream)
        return
    rest = drive(inf, [whole[cut:]], 1 << 20, [False])
    assert out + rest == content
    assert inf.consumed == len(stream)


@given(entries(), st.integers(1, 4096), st.integers(0, 10**6))
@SETTINGS
def test_through_pread_and_its_checkpoints(entry, step, seed):
    """`EntryStream` over a pread of the pack, its end right after the
    stream: the content; a `copy()` taken anywhere goes on to the same
    bytes as the original."""
    header, stream, content, trailing = entry
    pack_bytes = b"P" * 7 + header + stream
    at = 7 + len(header)
    reads = []

    def pread(offset, length):
        reads.append((offset, length))
        assert offset + length <= len(pack_bytes)  # never past the end
        return pack_bytes[offset:offset + length]

    inf = EntryInflater(len(content), "here", zlib.crc32(header + stream), header, len(header))
    s = EntryStream(inf, pread, at, len(pack_bytes), step, 4 * step)
    rnd = random.Random(seed)
    out, copies = [], []
    while True:
        if rnd.random() < 0.3:
            copies.append((len(b"".join(out)), s.copy()))
        piece = s.next_chunk(rnd.randint(1, 5000))
        if not piece:
            break
        out.append(piece)
    got = b"".join(out)
    assert got == content and inf.consumed == len(stream)
    for done, c in copies:
        rest = []
        while True:
            piece = c.next_chunk(1 << 16)
            if not piece:
                break
            rest.append(piece)
        assert got[:done] + b"".join(rest) == content


@given(entries(), st.integers(0, 10**6), st.booleans())
@SETTINGS
def test_a_cut_stream_is_refused(entry, where, by_end):
    """A stream cut short: past the end it may not cross, or a source with
    nothing more to give; never a result."""
    header, stream, content, _ = entry
    cut = where % len(stream)  # at least its last byte is missing
    source = stream[:cut]
    end = len(source) if by_end else len(stream) + 100
    with pytest.raises(DamagedImage) as info:
        inflate_from(lambda o, n: source[o:o + n], 0, len(content), end, "here",
                     zlib.crc32(header + stream), header)
    assert info.value.what == ("zlib stream runs past the end of the pack" if by_end
                               else "zlib stream is truncated")
    assert info.value.where == "here"
    inf = EntryInflater(len(content), "here", None, header + source, len(header))
    drive(inf, [], 1 << 20, [False])
    assert not inf.done and inf.needs_input


@given(entries(), st.integers(1, 10**6), st.integers(1, 5000))
@SETTINGS
def test_a_size_lie_is_refused_within_the_bound(entry, lie, limit):
    """Declared smaller: refused once size + 1 bytes came out, no more
    handed out than declared; declared larger: refused at the end."""
    header, stream, content, trailing = entry
    for size in (max(0, len(content) - lie), len(content) + lie):
        if size == len(content):
            continue
        inf = EntryInflater(size, "here", None, header + stream + trailing, len(header))
        out = []
        with pytest.raises(DamagedImage) as info:
            while True:
                piece = inf.read(limit)
                assert piece or inf.done or not inf.needs_input  # all of it was given
                out.append(piece)
                assert inf.produced <= size
                if inf.done:
                    break
        handed = b"".join(out)
        assert len(handed) <= size and content.startswith(handed)
        if size < len(content):
            assert info.value.what == f"inflates to more than the declared {size} bytes"
        else:
            assert info.value.what == f"inflates to {len(content)} bytes, {size} declared"
        with pytest.raises(DamagedImage) as again:
            inflate_entry(header + stream, len(header), size, "here")
        assert again.value.what == info.value.what


def outcome(run) -> str:
    """What an inflate of a damaged entry gives: its words, "cut short" when
    the input ran out first (a reader would read on, into whatever follows
    the entry), never a result."""
    try:
        inf = run()
    except DamagedImage as exc:
        assert exc.where == "here"
        return exc.what
    assert inf is not None and not inf.done, "a damaged entry was accepted"
    return "cut short"


@given(entries(), st.integers(0, 10**6), st.integers(0, 7), st.booleans())
@SETTINGS
def test_a_flipped_bit_never_gives_a_result(entry, where, bit, crc_side):
    """One bit changed in the header, the stream, or the CRC-32 the IDX
    holds: refused (with the CRC-32 known, a damaged header too), in the
    same words whether inflated in one call or fed in pieces; a CRC-32
    mismatch says both values."""
    header, stream, content, trailing = entry
    crc = zlib.crc32(header + stream)
    raw = bytearray(header + stream)
    if crc_side:
        crc ^= 1 << (where % 32)
    else:
        raw[where % len(raw)] ^= 1 << bit
    damaged = bytes(raw) + trailing
    hl = len(header)
    one_call = outcome(lambda: inflate_entry(damaged, hl, len(content), "here", crc)[2])

    def fed() -> EntryInflater:
        inf = EntryInflater(len(content), "here", crc, damaged[:hl], hl)
        drive(inf, pieces(damaged[hl:], [where % 97, where % 1013]), 333, [False])
        return inf

    assert outcome(fed) == one_call
    if crc_side:
        assert one_call == (f"entry CRC-32 {crc ^ (1 << (where % 32)):08x} is not the "
                            f"IDX's {crc:08x}")


def test_not_zlib_is_said_so():
    with pytest.raises(DamagedImage) as info:
        inflate_entry(b"\x93\x05" + b"not a zlib stream", 2, 10, "here")
    assert info.value.what.startswith("bad zlib stream (") and info.value.where == "here"


BOMB = zlib.compress(bytes(16 << 20), 9)  # 16 MiB of zeros in 16 KiB


@pytest.mark.parametrize("how", ["one call", "streamed", "fed"])
def test_a_bomb_builds_no_more_than_declared(how):
    """16 MiB of zeros declared as 1,000 bytes: refused having built about
    that much, not 16 MiB (tracemalloc sees every bytes object zlib's
    output is put in)."""
    tracemalloc.start()
    try:
        with pytest.raises(DamagedImage, match="more than the declared 1000 bytes"):
            if how == "one call":
                inflate_entry(b"\x93" + BOMB, 1, 1000, "here")
            elif how == "streamed":
                inflate_from(lambda o, n: BOMB[o:o + n], 0, 1000, len(BOMB), "here")
            else:
                pack.Inflater(1000, "here").feed(BOMB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(BOMB) * 4 + (1 << 20)  # the input and its copies, not the output


def test_the_old_api_is_the_same_inflater():
    """`format.pack`'s Inflater and inflate_from: the names verify and the
    tests' forger use."""
    assert pack.Inflater is Inflater and pack.inflate_from is inflate_from
    stream = zlib.compress(b"hello" * 100)
    inf = pack.Inflater(500, "here")
    inf.feed(stream[:10])
    assert not inf.done
    inf.feed(stream[10:] + b"tail")
    assert inf.done and inf.data == b"hello" * 100 and inf.consumed == len(stream)
    assert pack.inflate_from(lambda o, n: stream[o:o + n], 0, 500, len(stream), "here") == (
        b"hello" * 100, len(stream))
