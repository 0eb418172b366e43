"""A plain (undeltified) pack and its .idx, written as objects stream in.

This is the cheap way to hand a directory's objects to `git pack-objects`:
one sequential file with fast zlib, instead of one loose file per object.
The real compression (deltas, zlib at git's level) happens in pack-objects,
which is run with `--no-reuse-object`, so nothing of this pack's encoding
survives into the image.

What is written is remembered in columns (`_Written`): 32 bytes an object
and a 4-byte slot of an open-addressing table, instead of a dict of tuples
(about 0.25 KB an object: a quarter of a gigabyte at a million files).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from array import array
from typing import BinaryIO

from ..format.idx import encode_idx_columns
from ..format.pack import OBJ_BLOB, TYPE_NAMES, entry_header, object_id

# Fast compression: this pack lives for seconds and is re-read once.
TEMP_ZLIB_LEVEL = 1
CHUNK = 1 << 20


class _Written:
    """The objects written so far: ids, offsets and CRCs in columns, and a
    hash table (linear probing on the id's first 8 bytes, which SHA-1 makes
    uniform) of their numbers + 1 for `in`, kept at most half full."""

    def __init__(self) -> None:
        self.shas = bytearray()
        self.offsets = array("Q")
        self.crcs = array("I")
        self._slots = array("I", bytes(4 * 1024))
        self._mask = 1023

    def __len__(self) -> int:
        return len(self.offsets)

    def _find(self, sha: bytes) -> int:
        """The slot holding `sha`, or the empty one where it would go."""
        slots, mask, shas = self._slots, self._mask, self.shas
        at = int.from_bytes(sha[:8], "big") & mask
        while True:
            n = slots[at]
            if not n or shas[20 * (n - 1):20 * n] == sha:
                return at
            at = (at + 1) & mask

    def __contains__(self, sha: bytes) -> bool:
        return self._slots[self._find(sha)] != 0

    def add(self, sha: bytes, offset: int, crc: int) -> None:
        """Record a new object (not already there)."""
        self.shas += sha
        self.offsets.append(offset)
        self.crcs.append(crc)
        n = len(self.offsets)
        if 2 * n > self._mask + 1:
            self._grow()
        else:
            self._slots[self._find(sha)] = n

    def _grow(self) -> None:
        size = 2 * (self._mask + 1)
        self._slots = array("I", bytes(4 * size))
        self._mask = size - 1
        for n in range(1, len(self.offsets) + 1):
            self._slots[self._find(bytes(self.shas[20 * (n - 1):20 * n]))] = n


class PlainPackWriter:
    """Write objects into `path` + ".pack", deduplicated by id; `finish()` writes the .idx.

    The object count in the pack header is only known at the end, so it is
    patched in and the trailer checksum computed by re-reading the file
    (cheap: the file was just written and is in the page cache).
    """

    zlib_level = TEMP_ZLIB_LEVEL  # `base.NewObjectsWriter` writes at git's level instead

    def __init__(self, path: str) -> None:
        self.pack_path = path + ".pack"
        self.idx_path = path + ".idx"
        self._f: BinaryIO = open(self.pack_path, "w+b")
        self._f.write(b"PACK" + struct.pack(">II", 2, 0))
        self._offset = 12
        self._entries = _Written()
        self.bytes_in = 0

    def __contains__(self, sha: bytes) -> bool:
        return sha in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, type_num: int, data: bytes, sha: bytes | None = None) -> bytes:
        """Add an object held in memory; return its raw id."""
        if sha is None:
            sha = object_id(TYPE_NAMES[type_num], data)
        if sha in self._entries:
            return sha
        record = entry_header(type_num, len(data)) + zlib.compress(data, self.zlib_level)
        self._entries.add(sha, self._offset, zlib.crc32(record))
        self._f.write(record)
        self._offset += len(record)
        self.bytes_in += len(data)
        return sha

    def add_blob_stream(self, f: BinaryIO, size: int) -> bytes:
        """Add a blob of `size` bytes read from `f` in chunks (large files).

        Raises ValueError if `f` does not hold exactly `size` bytes (it
        changed while being read). A duplicate is written then dropped.
        """
        start = self._offset
        header = entry_header(OBJ_BLOB, size)
        sha = hashlib.sha1(b"blob %d\0" % size)
        comp = zlib.compressobj(self.zlib_level)
        crc = zlib.crc32(header)
        self._f.write(header)
        written = len(header)
        remaining = size
        while True:
            chunk = f.read(min(CHUNK, remaining) if remaining else 1)
            if not chunk:
                break
            if len(chunk) > remaining:
                raise ValueError("file grew while being read")
            remaining -= len(chunk)
            sha.update(chunk)
            out = comp.compress(chunk)
            crc = zlib.crc32(out, crc)
            self._f.write(out)
            written += len(out)
        if remaining:
            raise ValueError("file shrank while being read")
        out = comp.flush()
        crc = zlib.crc32(out, crc)
        self._f.write(out)
        written += len(out)
        digest = sha.digest()
        if digest in self:  # already written (or, for a subclass, not wanted)
            self._f.seek(start)
            self._f.truncate()
            return digest
        self._entries.add(digest, start, crc)
        self._offset += written
        self.bytes_in += size
        return digest

    def finish(self) -> int:
        """Patch the count, append the trailer, write the .idx; return object count."""
        f = self._f
        f.seek(8)
        f.write(struct.pack(">I", len(self._entries)))
        f.flush()
        f.seek(0)
        h = hashlib.sha1()
        remaining = self._offset
        while remaining:
            chunk = f.read(min(CHUNK * 8, remaining))
            h.update(chunk)
            remaining -= len(chunk)
        checksum = h.digest()
        f.seek(self._offset)
        f.write(checksum)
        f.close()
        written = self._entries
        with open(self.idx_path, "wb") as idx:
            idx.write(encode_idx_columns(written.shas, written.offsets, written.crcs, checksum))
        return len(written)

    def abort(self) -> None:
        self._f.close()
        for p in (self.pack_path, self.idx_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
