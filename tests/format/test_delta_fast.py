"""`pack._apply_fast`, the optimistic delta loop, against the plain reference.

`apply_delta` tries `_apply_fast` first and runs its checked loops only
when it gives up (None). So the property that matters: on any input the
fast loop returns either None or exactly the reference's result, and
`apply_delta` as a whole gives the reference's bytes or its error words.
The deltas here are built from raw instructions in the shapes the fast loop
special-cases (ops 0x97 and 0x93, with size bytes of 0 that mean 0x10000),
copies reaching past the base, truncated instructions, the reserved 0 and
wrong declared sizes, over bases both under and over 64 KiB (0x97's third
offset byte only reaches into the latter).
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from docteur_core.errors import DamagedImage
from docteur_core.format import pack

from tests.helpers import reference_git
from tests.helpers.forge import copy_op, varint


def outcome(fn):
    try:
        return "ok", bytes(fn())
    except DamagedImage as exc:
        return "error", exc.what


def copy_size(instruction: bytes) -> int:
    """The bytes a copy instruction adds (0x10000 for a size of 0), or 0 if
    it is cut short."""
    op, args = instruction[0], instruction[1:]
    need = bin(op & 0x7F).count("1")
    if len(args) < need:
        return 0
    size, k = 0, bin(op & 0x0F).count("1")
    for i in range(3):
        if op & (0x10 << i):
            size |= args[k] << 8 * i
            k += 1
    return size or 0x10000


@st.composite
def fast_deltas(draw):
    """(base, delta): mostly valid, sometimes wrong in one of the ways the
    fast loop must hand over to the checked ones."""
    small = draw(st.booleans())
    size = draw(st.integers(1, 400) if small else st.integers(0x10000, 0x10000 + 3000))
    base = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    ops, out = bytearray(), 0
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.integers(0, 11))
        if kind < 4:  # 0x97: three offset bytes, one size byte (0: 0x10000)
            off = draw(st.integers(0, min(len(base) + 2, 0xFFFFFF)))
            n = draw(st.integers(0, 255) if draw(st.integers(0, 9)) else st.just(0))
            ins = bytes([0x97]) + off.to_bytes(3, "little") + bytes([n])
        elif kind < 7:  # 0x93: two offset bytes, one size byte
            off = draw(st.integers(0, min(len(base) + 2, 0xFFFF)))
            n = draw(st.integers(0, 255) if draw(st.integers(0, 9)) else st.just(0))
            ins = bytes([0x93]) + off.to_bytes(2, "little") + bytes([n])
        elif kind < 8:  # any other copy, as git writes it
            off = draw(st.integers(0, len(base) + 2))
            ins = copy_op(off, draw(st.integers(1, len(base) + 2)))
        elif kind < 9:  # any copy op byte with whatever bytes follow
            ins = bytes([draw(st.integers(0x80, 0xFF))]) + draw(st.binary(max_size=7))
        elif kind < 11:
            text = draw(st.binary(min_size=1, max_size=127))
            ins = bytes([len(text)]) + text
        else:
            ins = b"\0"
        ops += ins
        out += copy_size(ins) if ins[0] & 0x80 else ins[0] if ins[0] else 0
    declared = max(out + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 0x10000, -0x10000])), 0)
    body = varint(len(base) + draw(st.sampled_from([0, 0, 0, 0, 0, 1]))) + varint(declared)
    body += bytes(ops)
    if draw(st.integers(0, 4)) == 0:
        body = body[:len(body) - draw(st.integers(1, 5))]
    return base, body


@given(fast_deltas())
@settings(max_examples=1500, deadline=None)
def test_apply_delta_equals_the_reference(case):
    base, delta = case
    want = outcome(lambda: reference_git.apply_delta(base, delta, "t"))
    assert outcome(lambda: pack.apply_delta(base, delta, "t")) == want
    assert outcome(lambda: pack.apply_delta(base, delta, "t", mutable=True)) == want


def _start(base: bytes, delta: bytes) -> tuple[int, int] | None:
    """(result size, first instruction) when the delta's header fits the
    base, as apply_delta checks before any loop runs; else None."""
    try:
        src, dst, pos = pack.delta_sizes(delta, "t")
    except DamagedImage:
        return None
    return (dst, pos) if src == len(base) else None


@given(fast_deltas())
@settings(max_examples=1500, deadline=None)
def test_fast_loop_gives_the_result_or_gives_up(case):
    base, delta = case
    want = outcome(lambda: reference_git.apply_delta(base, delta, "t"))
    start = _start(base, delta)
    if start is None:
        return
    dst, pos = start
    got = pack._apply_fast(base, delta, pos, dst)
    if got is not None:
        assert want == ("ok", bytes(got))


def test_fast_loop_gives_up_where_the_checks_are_needed():
    """One case per way out, each stated: the fast loop returns None (and
    apply_delta then says what the reference says)."""
    base = bytes(range(256)) * 600  # 153,600 bytes: 0x97 reaches in
    head = varint(len(base))
    cases = {
        "0x97 with a size byte of 0 (0x10000 bytes)":
            head + varint(0x10000) + b"\x97\x00\x00\x01\x00",
        "0x97 of 0x10000 bytes where 0 would fit the declared size":
            head + varint(1) + b"\x01a\x97\x00\x00\x01\x00",
        "0x97 outside the base": head + varint(10) + b"\x97\xfa\x57\x02\x0a",
        "0x93 outside the base (short base)":
            varint(5) + varint(4) + b"\x93\x03\x00\x04",
        "0x97 cut short": head + varint(10) + b"\x97\x00\x00\x01",
        "0x93 cut short": head + varint(10) + b"\x93\x00\x01",
        "other copy cut short": head + varint(10) + b"\xb7\x00\x00\x01\x0a",
        "insert cut short": head + varint(10) + b"\x0aabc",
        "reserved 0": head + varint(1) + b"\x01a\x00",
        "more than declared": head + varint(3) + b"\x97\x00\x00\x01\x0a",
        "less than declared": head + varint(30) + b"\x97\x00\x00\x01\x0a",
        "a short copy made up by an insert":
            varint(5) + varint(5) + b"\x93\x03\x00\x04\x02zz",
    }
    for name, delta in cases.items():
        b = base if delta.startswith(head) else b"abcde"
        src, dst, pos = pack.delta_sizes(delta, "t")
        assert pack._apply_fast(b, delta, pos, dst) is None, name
        assert (outcome(lambda: pack.apply_delta(b, delta, "t"))
                == outcome(lambda: reference_git.apply_delta(b, delta, "t"))), name
    # The valid one among them is built by the checked loop.
    delta = cases["0x97 with a size byte of 0 (0x10000 bytes)"]
    assert pack.apply_delta(base, delta, "t") == base[0x10000:0x20000]


def streamed(base: bytes, delta: bytes, chunk: int, check: bool):
    pieces: list[bytes] = []
    if check:
        pack.check_delta(base, delta, "t")
        assert pieces == []
    pack.write_delta(base, delta, pieces.append, "t", chunk=chunk)
    assert all(type(p) is bytes for p in pieces)
    return pieces


@given(fast_deltas(), st.sampled_from([1, 100, 5000, 1 << 20]), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_check_and_write_equal_the_reference(case, chunk, check):
    """check_delta + write_delta (their fast passes, then the checked walk
    on damage): the reference's bytes, in pieces of about `chunk`, or its
    error words, and nothing written after a failed check."""
    base, delta = case
    want = outcome(lambda: reference_git.apply_delta(base, delta, "t"))
    pieces: list[bytes] = []

    def run():
        pieces.extend(streamed(base, delta, chunk, check))
        return b"".join(pieces)

    assert outcome(run) == want
    if want[0] == "ok":
        # A piece is at most `chunk` plus one instruction: a copy of up to 16 MiB.
        assert all(len(p) < chunk + (1 << 24) for p in pieces)
    elif check:
        assert pieces == []


@given(fast_deltas())
@settings(max_examples=1000, deadline=None)
def test_check_fast_agrees_with_the_checked_walk(case):
    base, delta = case
    start = _start(base, delta)
    if start is None:
        return
    dst, pos = start
    sound = outcome(lambda: reference_git.apply_delta(base, delta, "t"))[0] == "ok"
    assert pack._check_fast(base, delta, pos, dst) == sound
