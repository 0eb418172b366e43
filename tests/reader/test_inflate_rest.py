"""Entries longer than their first read: the whole-entry inflate against the stream.

An entry whose zlib stream runs past the bytes read with its header (most
files of a source tree) is finished by `Store._inflate_entry` in one more
read, sized for it, often inflated in one zlib call from the stream's
first byte. The reader must say exactly what it says when every entry is
streamed from its first byte in small reads (`_stream_entry`, the same
format/inflate.py inflater fed another way): such a store is the oracle
here, on valid entries (2 KiB to 1 MiB, text and noise, blobs and a
delta) and on the same image damaged by hypothesis in and around those
entries.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.blockdev.block import ByteReader, MemoryDevice, SectorCache
from docteur_core.errors import DamagedImage
from docteur_core.format import layout
from docteur_core.format.limits import INFLATE_STEP
from docteur_core.reader import Image
from docteur_core.reader.store import Store

from tests.helpers.forge import Obj, build, make_delta, simple

MODES = ("fast", "light", "offset")


class StreamingStore(Store):
    """Every entry through `_stream_entry`, its input fed in reads of 97
    bytes (an entry's CRC-32, its stream's end, its header: all met across
    a read's boundary somewhere)."""

    def _inflate_entry(self, pos, eh, buf, crc, where):
        parts = []
        length = self._stream_entry(pos, eh, buf, crc, where, parts.append)
        return b"".join(parts), length

    def _entry_stream(self, pos, eh, buf, crc, where, step=None, max_step=0):
        return super()._entry_stream(pos, eh, buf[:eh.header_len + 1], crc, where, 97, 97)


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


def test_a_long_entry_takes_one_read_past_its_header():
    """A blob stored whole, up to INFLATE_STEP, whose stream runs past the
    bytes read with its header: one more read, so the property below tests
    that way of reading, not only the stream's."""
    reads = []
    reader = ByteReader(MemoryDevice(IMAGE, 512))

    def pread(offset, length):
        reads.append((offset, length))
        return reader.pread(offset, length)

    store = Store(pread, reader.capacity)
    long_ones = [name for name in ("noise", "text", "big", "mixed")
                 if len(CONTENT[name]) <= INFLATE_STEP]
    assert len(long_ones) == 4
    for name in long_ones:
        oid, offset = OFFSETS[name]
        reads.clear()
        assert store.read_object(oid, "blob", offset)[1] == CONTENT[name]
        assert len(reads) == 2, (name, reads)
        assert reads[1][0] == reads[0][0] + reads[0][1]  # on from the header's read
        store.clear_cache()


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
