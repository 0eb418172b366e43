"""Entries longer than their first read: `Store._inflate_rest` against the stream.

An entry whose zlib stream runs past the bytes read with its header (most
files of a source tree) is finished by `_inflate_rest`: one more read and
the same inflater. Anything odd makes it give up, and `_stream_entry`
inflates the entry again from its start and reports the damage. So the
reader must say exactly what it said when `_stream_entry` did all of them:
a store whose `_inflate_rest` always gives up is the oracle here, on valid
entries (2 KiB to 1 MiB, text and noise, blobs and a delta) and on the
same image damaged by hypothesis in and around those entries.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.blockdev.block import ByteReader, MemoryDevice, SectorCache
from docteur_core.errors import DamagedImage
from docteur_core.format import layout
from docteur_core.reader import Image
from docteur_core.reader.store import Store

from tests.helpers.forge import Obj, build, make_delta, simple

MODES = ("fast", "light", "offset")


class StreamingStore(Store):
    """The reader as it was: every long entry through `_stream_entry`."""

    def _inflate_rest(self, *args, **kwargs):
        return None


def files() -> dict[str, bytes]:
    rnd = random.Random(7)
    text = b"".join(b"#define REG_%05d 0x%08x\n" % (i, rnd.getrandbits(32)) for i in range(40000))
    return {
        "noise": rnd.randbytes(3000),  # longer compressed than the first read's 1 KiB
        "text": text[:20000],
        "big": text[:1 << 20],  # INFLATE_STEP exactly: the largest taken this way
        "over": text[:(1 << 20) + 1],  # one more: streamed as before
        "mixed": rnd.randbytes(40000) + text[:100000],
    }


def image_bytes() -> tuple[bytes, dict[str, bytes]]:
    content = files()
    objs = {name: Obj("blob", data) for name, data in content.items()}
    base = objs["text"]
    target = content["text"] + random.Random(8).randbytes(5000)
    objs["delta"] = Obj("blob", target, ofs_base=base, delta=make_delta(content["text"], target))
    content["delta"] = target
    entries, cid = simple(objs)
    return bytes(build(entries, cid)), content


IMAGE, CONTENT = image_bytes()


def _offsets() -> dict[str, tuple[bytes, int]]:
    reader = ByteReader(MemoryDevice(IMAGE, 512))
    image = Image(Store(reader.pread, reader.capacity), "fast")
    ids = {name: bytes.fromhex(image.digest(name)) for name in CONTENT}
    return {name: (oid, image.store.offset_of(oid)) for name, oid in ids.items()}


OFFSETS = _offsets()


def outcome(data: bytes, mode: str, store_class, names=None) -> list:
    """What reading every file gives: its bytes or the DamagedImage words.

    "offset" reads each object at the offset a path index would give, with
    no IDX CRC-32 to check (as fast mode with a path index does): then the
    sizes and zlib's checks are all there is."""
    device = SectorCache(MemoryDevice(data, 512))
    reader = ByteReader(device)
    got = []
    try:
        store = store_class(reader.pread, reader.capacity)
        if mode == "offset":
            for name in names or sorted(CONTENT):
                oid, offset = OFFSETS[name]
                try:
                    got.append(("ok", store.read_object(oid, "blob", offset)[1]))
                except DamagedImage as exc:
                    got.append(("error", exc.what))
                store.clear_cache()
            return got
        image = Image(store, mode)
    except DamagedImage as exc:
        return got + [("open", exc.what)]
    for name in names or sorted(CONTENT):
        try:
            got.append(("ok", image.get(name)))
        except DamagedImage as exc:
            got.append(("error", exc.what))
        image.store.clear_cache()
    return got


def test_valid_entries_read_whole():
    for mode in MODES:
        got = outcome(IMAGE, mode, Store)
        assert got == [("ok", CONTENT[name]) for name in sorted(CONTENT)]
        assert got == outcome(IMAGE, mode, StreamingStore)


def test_most_entries_take_the_short_way():
    """`_inflate_rest` is used (not given up on) for every long entry under
    INFLATE_STEP, so the property below tests it, not only the fallback."""
    device = MemoryDevice(IMAGE, 512)
    reader = ByteReader(device)
    taken = []

    class Counting(Store):
        def _inflate_rest(self, *args, **kwargs):
            done = super()._inflate_rest(*args, **kwargs)
            taken.append(done is not None)
            return done

    image = Image(Counting(reader.pread, reader.capacity), "fast")
    for name in CONTENT:
        image.get(name)
    assert taken and all(taken)


def entry_span() -> tuple[int, int]:
    """Where the blobs' entries lie in the image (after the commit and tree)."""
    start = layout.PACK_OFFSET + 12
    end = int.from_bytes(IMAGE[20:28], "little")
    return start, end


@given(st.one_of(st.integers(0, 2**32), st.tuples(st.sampled_from(sorted(CONTENT)),
                                                  st.integers(0, 40))),
       st.sampled_from(["flip", "overwrite", "zero"]),
       st.integers(0, 7), st.binary(min_size=1, max_size=4))
@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_damage_is_reported_as_the_stream_reports_it(where, how, bit, junk):
    """Anywhere in the entries, or in an entry's header and first bytes
    (sizes, distances, the zlib header), where a lie is most likely to be
    read as something else."""
    if isinstance(where, tuple):
        name, delta = where
        pos = OFFSETS[name][1] + delta
    else:
        start, end = entry_span()
        pos = start + (where * 2654435761) % (end - start)
    broken = bytearray(IMAGE)
    if how == "flip":
        broken[pos] ^= 1 << bit
    elif how == "overwrite":
        broken[pos:pos + len(junk)] = junk
    else:
        broken[pos:pos + 64] = bytes(min(64, len(broken) - pos))
    broken = bytes(broken[:len(IMAGE)])
    for mode in MODES:
        assert outcome(broken, mode, Store) == outcome(broken, mode, StreamingStore)


def test_every_bit_of_the_entry_headers():
    """Each bit of each long entry's first two bytes (its type and size)
    flipped in turn: a blob turned tree, a size a little off. Where the
    zlib stream still inflates, the IDX's CRC-32 or the declared size is
    what tells; the words must be the stream's."""
    for name in CONTENT:
        at = OFFSETS[name][1]
        for pos in (at, at + 1):
            for bit in range(8):
                broken = bytearray(IMAGE)
                broken[pos] ^= 1 << bit
                for mode in MODES:
                    assert (outcome(bytes(broken), mode, Store, [name])
                            == outcome(bytes(broken), mode, StreamingStore, [name])), (name, pos, bit)
