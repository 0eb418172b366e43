"""Large delta results written piece by piece, never held whole.

`pack.check_delta` + `pack.write_delta` are the streaming twin of
`pack.apply_delta`: judged here against the plain reference applier of
tests/helpers/reference_git.py (same bytes, same error words), then through the
store on hand-made images whose delta results pass STREAM_THRESHOLD:
right bytes, bounded pieces, nothing cached, and every damaged delta a
DamagedImage naming the entry with nothing written.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.errors import DamagedImage, LimitExceeded
from docteur_core.format import pack
from docteur_core.format.limits import STREAM_THRESHOLD
from docteur_core.reader import Image

from tests.helpers import reference_git
from tests.helpers.forge import Obj, build, copy_op, simple, varint


def insert_ops(text: bytes) -> bytes:
    return b"".join(bytes([len(text[i:i + 127])]) + text[i:i + 127]
                    for i in range(0, len(text), 127))


@st.composite
def deltas(draw):
    """A base and instructions on it, sometimes slightly wrong (outside the
    base, a wrong declared size, a cut tail, a reserved 0)."""
    base = draw(st.binary(min_size=1, max_size=500))
    ops, out = bytearray(), 0
    for _ in range(draw(st.integers(0, 15))):
        kind = draw(st.integers(0, 9))
        if kind < 5:
            off = draw(st.integers(0, len(base) + 2))
            size = draw(st.integers(1, len(base) + 2))
            ops += copy_op(off, size)
            out += size
        elif kind < 9:
            text = draw(st.binary(min_size=1, max_size=127))
            ops += bytes([len(text)]) + text
            out += len(text)
        else:
            ops += b"\0"
    declared = max(out + draw(st.sampled_from([0, 0, 0, 0, 1, -1])), 0)
    body = varint(len(base) + draw(st.sampled_from([0, 0, 0, 0, 0, 1]))) + varint(declared)
    body += bytes(ops)
    cut = draw(st.integers(0, 3))
    if cut and draw(st.booleans()):
        body = body[:len(body) - cut]
    return base, body


def outcome(fn):
    try:
        return "ok", fn()
    except DamagedImage as exc:
        return "error", exc.what


def streamed(base: bytes, delta: bytes, chunk: int, limit: int = 512 << 20):
    """check_delta then write_delta, as the store does; the pieces written."""
    pieces: list[bytes] = []
    size = pack.check_delta(base, delta, "t", limit)
    assert pieces == []
    assert pack.write_delta(base, delta, pieces.append, "t", limit, chunk) == size
    assert all(type(p) is bytes for p in pieces)
    return b"".join(pieces), pieces


@given(deltas(), st.sampled_from([1, 7, 64, 1 << 20]))
@settings(max_examples=500, deadline=None)
def test_stream_equals_the_reference(case, chunk):
    base, delta = case
    want = outcome(lambda: reference_git.apply_delta(base, delta, "t"))
    got = outcome(lambda: streamed(base, delta, chunk)[0])
    assert got == want
    assert outcome(lambda: pack.apply_delta(base, delta, "t")) == want
    # The hash fed by check_delta sees exactly the result.
    if want[0] == "ok":
        seen = bytearray()
        pack.check_delta(base, delta, "t", update=seen.extend)
        assert seen == want[1]


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_stream_equals_the_reference_on_garbage(base, delta):
    framed = varint(len(base)) + delta
    for d in (delta, framed, framed[:1] + varint(len(delta)) + delta):
        assert (outcome(lambda: streamed(base, d, 64)[0])
                == outcome(lambda: reference_git.apply_delta(base, d, "t")))


@given(deltas(), st.integers(-1, 1))
@settings(max_examples=200, deadline=None)
def test_stream_result_limit_like_apply_delta(case, slack):
    base, delta = case
    try:
        declared = pack.delta_sizes(delta, "t")[1]
    except DamagedImage:
        declared = 0
    limit = max(declared + slack, 0)
    want = outcome(lambda: pack.apply_delta(base, delta, "t", limit))
    assert outcome(lambda: streamed(base, delta, 64, limit)[0]) == want
    if want[0] == "error" and "over the limit" in want[1]:
        with pytest.raises(LimitExceeded):
            pack.check_delta(base, delta, "t", limit)


def big_pair(size: int, seed: int = 1) -> tuple[bytes, bytes, bytes]:
    """A base of `size` bytes, a target that changes a few lines of it, and
    the delta between them in git's style (64 KiB copies, short inserts)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randrange(2, 9)))
             for _ in range(300)]
    base = bytearray()
    while len(base) < size:
        base += b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
    base = bytes(base[:size])
    cuts = sorted(rnd.sample(range(1, size), 9))
    target, delta = bytearray(), bytearray()
    prev = 0
    for cut in cuts + [size]:
        for off in range(prev, cut, 0x10000):
            n = min(0x10000, cut - off)
            delta += copy_op(off, n)
            target += base[off:off + n]
        if cut < size:
            text = b"changed at %d\n" % cut
            delta += insert_ops(text)
            target += text
        prev = cut
    return base, bytes(target), varint(size) + varint(len(target)) + bytes(delta)


def test_large_result_through_pack():
    base, target, delta = big_pair(3 << 20)
    data, pieces = streamed(base, delta, 1 << 20)
    assert data == target == pack.apply_delta(base, delta, "t")
    assert max(len(p) for p in pieces) < (1 << 20) + 0x10000


@pytest.fixture(scope="module")
def big_image():
    """A blob over STREAM_THRESHOLD and an OFS delta and a REF delta on it."""
    base, target, delta = big_pair(STREAM_THRESHOLD + (1 << 20))
    a = Obj("blob", base)
    b = Obj("blob", target, ofs_base=a, delta=delta)
    c = Obj("blob", target + b"!", ref_base=a.oid, delta=delta_plus(delta, b"!"))
    objs, cid = simple({"a": a, "b": b, "c": c})
    return build(objs, cid), base, target, b, c


def delta_plus(delta: bytes, tail: bytes) -> bytes:
    """The same delta with `tail` inserted at the end (its result size raised)."""
    src, dst, pos = pack.delta_sizes(delta, "")
    return varint(src) + varint(dst + len(tail)) + delta[pos:] + insert_ops(tail)


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("mode", ["light", "fast"])
@pytest.mark.parametrize("verify", [False, True])
def test_large_delta_streams_in_pieces(big_image, mode, verify):
    data, base, target, b, c = big_image
    image = Image.open(MemoryDevice(bytes(data), 512), mode, verify=verify)
    for name, want in (("b", target), ("c", target + b"!")):
        pieces: list[bytes] = []
        assert image.stream(name, pieces.append) == len(want)
        assert b"".join(pieces) == want
        # Written as it is rebuilt: no piece near the size of the result...
        assert max(len(p) for p in pieces) < (1 << 20) + 0x10000
    # ... and the results are not cached (the base is: both deltas use it).
    store = image.store
    assert b.offset + 28 not in store._cache and c.offset + 28 not in store._cache
    # Reading it whole still gives the same bytes.
    assert image.get("b") == target


def _refused(data: bytes, mode: str, match: str, verify: bool = False, path: str = "b"):
    image = Image.open(MemoryDevice(bytes(data), 512), mode, verify=verify)
    pieces: list[bytes] = []
    with pytest.raises(DamagedImage, match=match):
        image.stream(path, pieces.append)
    assert pieces == []  # refused before anything went out


_BASES: dict[int, Obj] = {}


def _base_obj(base: bytes) -> Obj:
    a = _BASES.get(id(base))
    if a is None:  # deflating 17 MiB once, not once per damaged image
        a = _BASES[id(base)] = Obj("blob", base)
        entry = a.entry()
        a.entry = lambda: entry
    return a


def _with_delta(base: bytes, target: bytes, delta: bytes, oid: bytes | None = None) -> bytes:
    a = _base_obj(base)
    b = Obj("blob", target, ofs_base=a, delta=delta, oid=oid)
    objs, cid = simple({"a": a, "b": b})
    return build(objs, cid)


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("mode", ["light", "fast"])
def test_damaged_large_deltas_are_refused_before_writing(big_image, mode):
    _, base, target, b, _ = big_image
    src, dst, pos = pack.delta_sizes(b.delta, "")
    body = b.delta[pos:]
    at = r"object [0-9a-f]{40} at offset \d+"
    # A copy reaching past the end of the base, at the very end of the delta.
    bad = varint(src) + varint(dst + 10) + body + copy_op(src - 5, 10)
    _refused(_with_delta(base, target, bad), mode, rf"delta copies 10 bytes at \d+, "
             rf"outside a base of {src} \({at}\)|outside a base.*{at}")
    # One byte short of what it declares.
    _refused(_with_delta(base, target, varint(src) + varint(dst + 1) + body), mode,
             f"delta result is {dst} bytes, {dst + 1} declared.*{at}")
    # A copy instruction cut short, a reserved instruction.
    _refused(_with_delta(base, target, varint(src) + varint(dst) + body + b"\x91"), mode,
             f"truncated copy instruction in delta.*{at}")
    _refused(_with_delta(base, target, varint(src) + varint(dst) + body + b"\0"), mode,
             f"reserved delta instruction 0.*{at}")
    # The delta expects another base size.
    _refused(_with_delta(base, target, varint(src + 1) + varint(dst) + body), mode,
             f"delta expects a base of {src + 1} bytes, base has {src}.*{at}")
    # A SHA-1 that is not the content's: caught with verify, before writing.
    lie = bytes(19) + b"\x01"
    _refused(_with_delta(base, target, b.delta, oid=lie), mode, "SHA-1 mismatch", verify=True)
    # The result size limit, and the work limit, before anything is built.
    image = Image.open(MemoryDevice(bytes(_with_delta(base, target, b.delta)), 512), mode,
                       max_object_size=dst - 1)
    with pytest.raises(LimitExceeded, match="max_object_size"):
        image.stream("b", lambda piece: pytest.fail("written"))
    image = Image.open(MemoryDevice(bytes(_with_delta(base, target, b.delta)), 512), mode,
                       max_lookup_bytes=dst + src // 2)
    with pytest.raises(LimitExceeded, match="max_lookup_bytes"):
        image.stream("b", lambda piece: pytest.fail("written"))


def test_large_delta_of_the_wrong_type_is_refused(big_image):
    _, base, target, b, _ = big_image
    a = _base_obj(base)
    # A tree entry whose object is a delta on a blob: its mode says tree.
    t_oid = Obj("blob", target, ofs_base=a, delta=b.delta)
    from tests.helpers.forge import commit, tree
    root = Obj("tree", tree(("40000", "d", t_oid.oid)))
    c = Obj("commit", commit(root.oid))
    data = build([c, root, a, t_oid], c.oid)
    image = Image.open(MemoryDevice(bytes(data), 512), "light")
    pieces: list[bytes] = []
    with pytest.raises(DamagedImage, match="is a blob, a tree was expected"):
        image.store.stream_object(t_oid.oid, pieces.append, expect="tree")
    assert pieces == []


# -- the checked route: what apply_delta builds from when _apply_fast gives up ---

LONG_DELTA = 16 << 10


def applied_checked(base: bytes, delta: bytes, where: str = "t") -> bytes:
    """`apply_delta`'s checked route (`_delta_ops`), on any delta."""
    dst, pos = pack._delta_start(base, delta, where, 512 << 20)  # apply_delta's header checks
    out = bytearray()
    for from_base, start, length in pack._delta_ops(delta, pos, len(base), dst, where):
        out += (base if from_base else delta)[start:start + length]
    return bytes(out)


@given(deltas())
@settings(max_examples=500, deadline=None)
def test_the_checked_route_equals_the_reference(case):
    base, delta = case
    assert (outcome(lambda: applied_checked(base, delta))
            == outcome(lambda: reference_git.apply_delta(base, delta, "t")))


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_the_checked_route_equals_the_reference_on_garbage(base, delta):
    framed = varint(len(base)) + delta
    for d in (framed, framed[:1] + varint(len(delta)) + delta):
        assert (outcome(lambda: applied_checked(base, d))
                == outcome(lambda: reference_git.apply_delta(base, d, "t")))


@given(st.integers(0, 2**32), st.sampled_from([0, 1, -1]))
@settings(max_examples=30, deadline=None)
def test_long_deltas_through_apply_delta(seed, slack):
    rnd = random.Random(seed)
    # Thousands of small copies and inserts (a generated header's delta).
    base = bytes(rnd.getrandbits(8) for _ in range(3000))
    ops, want = bytearray(), bytearray()
    while len(ops) <= LONG_DELTA:
        if rnd.random() < 0.6:
            off, size = rnd.randrange(len(base)), rnd.randrange(1, 700)
            size = min(size, len(base) - off)
            ops += copy_op(off, size)
            want += base[off:off + size]
        else:
            text = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 128)))
            ops += insert_ops(text)
            want += text
    delta = varint(len(base)) + varint(len(want) + slack) + bytes(ops)
    expect = outcome(lambda: reference_git.apply_delta(base, delta, "t"))
    assert outcome(lambda: pack.apply_delta(base, delta, "t")) == expect
    if slack == 0:
        assert expect == ("ok", bytes(want))
        built = pack.apply_delta(base, delta, "t", mutable=True)
        assert type(built) is bytearray and built == want
        assert type(pack.apply_delta(base, delta, "t")) is bytes
    # Cut anywhere: the same verdict as the reference.
    cut = delta[:rnd.randrange(len(delta))]
    assert (outcome(lambda: pack.apply_delta(base, cut, "t"))
            == outcome(lambda: reference_git.apply_delta(base, cut, "t")))
