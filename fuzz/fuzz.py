#!/usr/bin/env python3
"""Fuzz every reader entry point with damaged and hostile images (issue 13).

    python3 fuzz/fuzz.py --seed 1 --budget 2000          # 2,000 cases
    python3 fuzz/fuzz.py --seed 1 --budget 600s          # for 10 minutes
    python3 fuzz/fuzz.py --json summary.json --findings _work/fuzz-findings

Why: random damage is mostly caught by zlib's and the IDX's checksums; the
bugs live where an image is *well formed but hostile* (a delta that builds
4 GB, a tree that names itself, a timezone of 20 digits). So most cases are
structure-aware: the harness parses a small real image (built with
`docteur_core.make.make_image` from generated trees with deltas, links,
executables and nested directories) with its own independent parser, then
either

- `raw`: flips bits, overwrites or truncates bytes anywhere or in one
  region (entry header, zlib data, IDX fanout/ids/CRCs/offsets, trailers);
- `entry`: rewrites pack entries (type/size varints, delta bases, delta
  instructions and declared sizes, zlib streams, bombs) and IDX tables
  (fanout, ids, CRCs, 32- and 64-bit offsets), then lays the image out
  again with consistent offsets, CRC-32s and checksums, so that only the
  check the mutation aims at can catch it;
- `object`: edits trees (modes, names, ids, order, nesting, self-reference,
  path explosions) and the commit (tree line, author and committer lines,
  timezones, huge messages), then rehashes every object up to the header's
  commit id: an image whose only fault is what it says.

Each case runs through `docteur ls/cat/stat/tree/info` in light and fast
mode, with and without `--verify`, the guest entry point
(`docteur_core.reader.guest.main`), `docteur verify` and `--quick`, and the
plugin's start-up check (`imagecheck.check_image` on a `FileDevice`, levels
quick and full). Operations run in a persistent runner subprocess (this
file with `--runner`) under `RLIMIT_AS` (`--mem-mb`) with a per-operation
timeout: a case is one request, the runner answers one JSON line per
operation, so a hang or a death costs only a restart. Outcomes:

    ok          exit 0 and the expected answer
    clean       exit 1 with one line on stderr (verify: one line per problem)
    silent      exit 0, different bytes, from a mutation only a SHA-1 can
                see, in a mode that does not check SHA-1s (by design)
    wrong       exit 0 with bytes (cat) or a size (stat) that differ from
                the source tree's, or verify accepting an image known damaged
    traceback   an exception other than DocteurError escaped
    memory      MemoryError (the address-space cap was hit)
    hang        no answer within the timeout
    crash       the runner died (signal, abort)
    noisy       exit 1 but not one line on stderr

Cases are deterministic for a given `--seed` and `--mem-mb` (case i uses
seed:i; bombs are sized 0.3 to 1.6 times the cap), whatever `--jobs`;
outcomes near the timeout can vary with the machine's load. A reproducer of each distinct failure (entry point,
outcome, exception site) is saved under `--findings` with the commands to
replay it.
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAILURES = ("wrong", "traceback", "memory", "hang", "crash", "noisy")
OUTCOMES = ("ok", "clean", "silent", "skipped") + FAILURES

from fuzz.gitbytes import (OBJ_BLOB, OBJ_COMMIT, OBJ_OFS_DELTA, OBJ_REF_DELTA, OBJ_TREE,  # noqa: E402
                          apply_delta, encode_tree, entry_header,
                          git_sorted, object_id, ofs_encode, parse_commit, parse_tree, sha1,
                          varint)


# ---------------------------------------------------------------------------
# Base images: small real trees built by the real builder.

def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _text(rng: random.Random, lines: int) -> bytes:
    words = [b"alpha", b"beta", b"gamma", b"delta", b"docteur", b"pack", b"tree", b"zlib",
             b"block", b"guest", b"image", b"commit", b"sector", b"offset"]
    return b"".join(b" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + b"\n"
                    for _ in range(lines))


def make_sources(root: Path) -> list[tuple[str, Path, int]]:
    """Two source trees: text with near-copies (git makes deltas of them),
    links, an executable, an empty file, deep nesting, odd names."""
    rng = random.Random(13)
    out = []
    a = root / "src-a"
    if not a.exists():
        big = _text(rng, 600)
        _write(a / "README.md", _text(rng, 40))
        _write(a / "src" / "main.py", b"#!/usr/bin/env python3\nprint('hello')\n" + _text(rng, 30))
        _write(a / "src" / "data" / "big.txt", big)
        _write(a / "src" / "data" / "big2.txt", big[:9000] + b"an edit in the middle\n" + big[9000:])
        _write(a / "src" / "data" / "big3.txt", big[:9000] + b"another edit\n" + big[9000:-500])
        for v in range(4, 8):  # near-copies: chains of deltas
            cut = 2000 * v
            _write(a / "src" / "versions" / f"big{v}.txt",
                   big[:cut] + b"version %d\n" % v + big[cut:])
        _write(a / "bin" / "run.sh", b"#!/bin/sh\necho run\n", 0o755)
        _write(a / "empty.txt", b"")
        _write(a / "deep" / "a" / "b" / "c" / "d" / "e" / "leaf.txt", b"leaf\n")
        _write(a / "names" / "sp ace.txt", b"space\n")
        _write(a / "names" / "\u00fcn\u00efcode.txt", "caf\u00e9\n".encode())
        _write(a / "names" / "q\"uote.txt", b"quote\n")
        (a / "link").symlink_to("README.md")
        (a / "dirlink").symlink_to("src/data")
    out.append(("a", a, 512))
    b = root / "src-b"
    if not b.exists():
        blob = bytes(rng.getrandbits(8) for _ in range(12000))
        _write(b / "bin.dat", blob)
        _write(b / "bin2.dat", blob[:6000] + b"\x00" * 64 + blob[6000:])
        for d in range(4):
            for f in range(8):
                _write(b / f"dir{d}" / f"file{f}.txt", _text(rng, 3 + f))
        for v in range(5):
            _write(b / "dir3" / f"bin-v{v}.dat", blob[:1000 * v] + b"v%d" % v + blob[1000 * v:])
        _write(b / "dir1" / "sub" / "x.txt", b"x\n" * 2000)
        _write(b / "dir1" / "sub" / "y.txt", b"x\n" * 1990 + b"y\n" * 10, 0o755)
        (b / "dir2" / "up").symlink_to("../dir1/sub/x.txt")
    out.append(("b", b, 4096))
    return out


def build_bases(workdir: Path) -> dict[str, bytes]:
    """name -> image bytes, built once into `workdir` (deterministic)."""
    from docteur_core.make import make_image

    workdir.mkdir(parents=True, exist_ok=True)
    bases = {}
    for name, src, bs in make_sources(workdir):
        img = workdir / f"base-{name}.img"
        if not img.exists():
            make_image(src, img, block_size=bs, date="2024-01-01T00:00:00Z",
                       author="Fuzz <fuzz@example.com>", message="fuzz base\n")
        bases[name] = img.read_bytes()
    return bases


# ---------------------------------------------------------------------------
# An independent parser and writer of images (never the product's code).

class Entry:
    """One pack entry, as fields the writer can re-encode (or `raw_header`)."""

    __slots__ = ("kind", "size", "base", "zdata", "id", "payload", "raw_header")

    def __init__(self, kind, size, base, zdata, id_, payload=None, raw_header=None):
        self.kind, self.size, self.base, self.zdata, self.id = kind, size, base, zdata, id_
        self.payload, self.raw_header = payload, raw_header

    def copy(self) -> "Entry":
        return Entry(self.kind, self.size, self.base, self.zdata, self.id, self.payload,
                     self.raw_header)


class Model:
    """A parsed image: entries in pack order, objects resolved, the tree walked."""

    def __init__(self, data: bytes):
        self.data = data
        self.commit_id = data[:20]
        self.idx_offset = int.from_bytes(data[20:28], "little")
        assert data[28:32] == b"PACK"
        count = int.from_bytes(data[36:40], "big")
        p = 40
        self.entries: list[Entry] = []
        self.offsets: list[int] = []
        self.spans: list[tuple[int, int, int]] = []  # (start, zstart, end)
        by_offset = {}
        for _ in range(count):
            start = p
            c = data[p]
            p += 1
            kind, size, shift = (c >> 4) & 7, c & 15, 4
            while c & 0x80:
                c = data[p]
                p += 1
                size |= (c & 0x7F) << shift
                shift += 7
            base = None
            if kind == OBJ_OFS_DELTA:
                c = data[p]
                p += 1
                dist = c & 0x7F
                while c & 0x80:
                    c = data[p]
                    p += 1
                    dist = ((dist + 1) << 7) | (c & 0x7F)
                base = ("ofs", by_offset[start - 28 - dist])
            elif kind == OBJ_REF_DELTA:
                base = ("ref", data[p:p + 20])
                p += 20
            d = zlib.decompressobj()
            payload = d.decompress(data[p:self.idx_offset])
            end = self.idx_offset - len(d.unused_data)
            by_offset[start - 28] = len(self.entries)  # the IDX counts from PACK
            self.entries.append(Entry(kind, size, base, data[p:end], None, payload))
            self.offsets.append(start - 28)
            self.spans.append((start, p, end))
            p = end
        self.pack_end = p + 20
        # IDX v2
        i = self.idx_offset
        assert data[i:i + 4] == b"\xfftOc"
        self.fanout_at = i + 8
        n = int.from_bytes(data[i + 8 + 255 * 4:i + 8 + 256 * 4], "big")
        self.n = n
        self.ids_at = i + 8 + 1024
        self.crcs_at = self.ids_at + 20 * n
        self.offs_at = self.crcs_at + 4 * n
        self.large_at = self.offs_at + 4 * n
        ids = [data[self.ids_at + 20 * k:self.ids_at + 20 * k + 20] for k in range(n)]
        offs = [int.from_bytes(data[self.offs_at + 4 * k:self.offs_at + 4 * k + 4], "big")
                for k in range(n)]
        nlarge = sum(1 for o in offs if o & 0x80000000)
        self.idx_end = self.large_at + 8 * nlarge + 40
        offs = [int.from_bytes(data[self.large_at + 8 * (o & 0x7FFFFFFF):][:8], "big")
                if o & 0x80000000 else o for o in offs]
        for k, o in enumerate(offs):
            self.entries[by_offset[o]].id = ids[k]
        # Resolve objects.
        self.objects: dict[bytes, tuple[int, bytes]] = {}
        resolved: dict[int, tuple[int, bytes]] = {}
        for k, e in enumerate(self.entries):
            resolved[k] = self._resolve(k, resolved)
            self.objects[e.id] = resolved[k]
        self.files: dict[str, tuple[int, bytes]] = {}   # path -> (mode, id)
        self.dirs: list[str] = []
        tree_id = parse_commit(self.objects[self.commit_id][1])["tree"]
        self.root = tree_id
        self._walk(tree_id, "")

    def _resolve(self, k: int, resolved) -> tuple[int, bytes]:
        e = self.entries[k]
        if e.base is None:
            return e.kind, e.payload
        if e.base[0] == "ofs":
            bk, bdata = resolved[e.base[1]]
        else:
            bk, bdata = self.objects[e.base[1]]
        return bk, apply_delta(bdata, e.payload)

    def _walk(self, tree_id: bytes, prefix: str) -> None:
        for mode, name, child in parse_tree(self.objects[tree_id][1]):
            path = prefix + name.decode("utf-8", "surrogateescape")
            if mode == 0o40000:
                self.dirs.append(path)
                self._walk(child, path + "/")
            else:
                self.files[path] = (mode, child)

    def content(self, path: str) -> bytes:
        return self.objects[self.files[path][1]][1]

    def block_size(self) -> int:
        bs = 512
        while self.idx_offset % (bs * 2) == 0 and len(self.data) % (bs * 2) == 0 and bs < 4096:
            bs *= 2
        return bs


def write_image(entries: list[Entry], commit_id: bytes, block_size: int, *,
                large_offsets: bool = False, fix_crc: bool = True,
                idx_ids: list[bytes] | None = None) -> bytes:
    """The layout: commit id, IDX offset, PACK, zeros, IDX v2, zeros.

    Delta bases are entry indices (`("ofs", k)`, encoded as the distance
    back), raw distances (`("ofs_raw", bytes)`) or ids (`("ref", id)`).
    """
    pack = bytearray(b"PACK" + struct.pack(">II", 2, len(entries)))
    offsets, crcs = [], []
    for e in entries:
        start = len(pack)  # pack-relative, as the IDX stores it
        offsets.append(start)
        hdr = e.raw_header if e.raw_header is not None else entry_header(e.kind, e.size)
        if e.base is not None:
            tag, val = e.base
            if tag == "ofs":
                hdr += ofs_encode(start - offsets[val]) if val < len(offsets) - 1 else ofs_encode(1)
            elif tag == "ofs_raw":
                hdr += val
            else:
                hdr += val
        chunk = hdr + e.zdata
        pack += chunk
        crcs.append(zlib.crc32(chunk))
    pack += sha1(bytes(pack))
    pack_sha = bytes(pack[-20:])
    ids = idx_ids or [e.id for e in entries]
    order = sorted(range(len(entries)), key=lambda k: ids[k])
    fanout = [0] * 256
    for k in order:
        fanout[ids[k][0]] += 1
    total, fan = 0, bytearray()
    for c in fanout:
        total += c
        fan += struct.pack(">I", total)
    small, large = bytearray(), bytearray()
    for k in order:
        off = offsets[k]
        if large_offsets or off >= 0x80000000:
            small += struct.pack(">I", 0x80000000 | (len(large) // 8))
            large += struct.pack(">Q", off)
        else:
            small += struct.pack(">I", off)
    crc_table = b"".join(struct.pack(">I", crcs[k] if fix_crc else 0) for k in order)
    idx = bytearray(b"\xfftOc" + struct.pack(">I", 2) + fan + b"".join(ids[k] for k in order)
                    + crc_table + small + large + pack_sha)
    idx += sha1(bytes(idx))
    idx_offset = -(-(28 + len(pack)) // block_size) * block_size
    size = -(-(idx_offset + len(idx)) // block_size) * block_size
    img = bytearray(size)
    img[:20] = commit_id
    img[20:28] = struct.pack("<Q", idx_offset)
    img[28:28 + len(pack)] = pack
    img[idx_offset:idx_offset + len(idx)] = idx
    return bytes(img)


def fix_checksums(img: bytearray, pack_end: int, idx_offset: int, idx_end: int) -> None:
    """Recompute the pack's and the IDX's SHA-1 trailers after a byte edit."""
    img[pack_end - 20:pack_end] = sha1(bytes(img[28:pack_end - 20]))
    img[idx_end - 40:idx_end - 20] = img[pack_end - 20:pack_end]
    img[idx_end - 20:idx_end] = sha1(bytes(img[idx_offset:idx_end - 20]))


# ---------------------------------------------------------------------------
# Mutations. Each returns a Case.

class Case:
    def __init__(self, image: bytes, family: str, desc: str, *, forged: bool = False,
                 damaged: bool | None = None, expect: dict | None = None,
                 path: str | None = None):
        self.image, self.family, self.desc = image, family, desc
        self.forged, self.damaged, self.path = forged, damaged, path
        self.expect = expect  # path -> (mode, bytes) the reader must answer, if it answers


def _entries_of(m: Model) -> list[Entry]:
    return [e.copy() for e in m.entries]


def _pristine_expect(m: Model) -> dict:
    return {p: (mode, m.objects[i][1]) for p, (mode, i) in m.files.items()}


def _path_of(m: Model, oid: bytes, rng: random.Random) -> str | None:
    paths = [p for p, (_, i) in m.files.items() if i == oid]
    return rng.choice(paths) if paths else None


def _entry_case(m: Model, entries, desc, rng, *, forged=True, damaged=None, path=None,
                **kw) -> Case:
    img = write_image(entries, m.commit_id, m.block_size(), **kw)
    return Case(img, "entry", desc, forged=forged, damaged=damaged, expect=_pristine_expect(m),
                path=path)


_BOMBS: dict = {}
SCALE = [1.0]  # bomb sizes follow the memory cap (--mem-mb / 1024)


def scaled(n: int) -> int:
    return max(1 << 20, int(n * SCALE[0]))


def _zeros_stream(n: int) -> bytes:
    """zlib stream of n zero bytes, made once (about 1 MB per GB)."""
    if n not in _BOMBS:
        c = zlib.compressobj(9)
        chunk = bytes(1 << 20)
        parts = [c.compress(chunk) for _ in range(n >> 20)]
        parts.append(c.compress(bytes(n & ((1 << 20) - 1))))
        parts.append(c.flush())
        _BOMBS[n] = b"".join(parts)
    return _BOMBS[n]


def mut_raw(m: Model, rng: random.Random) -> Case:
    img = bytearray(m.data)
    regions = {
        "anywhere": (0, len(img)),
        "header": (0, 28),
        "pack header": (28, 40),
        "entry headers": None,
        "zlib data": None,
        "pack trailer": (m.pack_end - 20, m.pack_end),
        "idx fanout": (m.fanout_at, m.ids_at),
        "idx ids": (m.ids_at, m.crcs_at),
        "idx crcs": (m.crcs_at, m.offs_at),
        "idx offsets": (m.offs_at, m.large_at),
        "idx trailer": (m.idx_end - 40, m.idx_end),
    }
    region = rng.choice(list(regions))
    span = regions[region]
    if span is None:
        k = rng.randrange(len(m.spans))
        start, zstart, end = m.spans[k]
        span = (start, zstart) if region == "entry headers" else (zstart, end)
    lo, hi = span
    op = rng.choice(["flip", "flip", "flip", "byte", "zero", "truncate", "fixed-flip"])
    if op == "truncate":
        cut = rng.randrange(lo, hi) if rng.random() < 0.7 else rng.randrange(len(img))
        return Case(bytes(img[:cut]), "raw", f"truncate at {cut} ({region})",
                    expect=_pristine_expect(m))
    n = rng.choice([1, 1, 1, 2, 3, 8])
    where = []
    for _ in range(n):
        at = rng.randrange(lo, hi)
        if op in ("flip", "fixed-flip"):
            img[at] ^= 1 << rng.randrange(8)
        elif op == "byte":
            img[at] = rng.randrange(256)
        else:
            img[at] = 0
        where.append(at)
    if op == "fixed-flip":
        # The trailers recomputed: only per-entry checks (CRC, zlib, SHA-1) remain.
        fix_checksums(img, m.pack_end, m.idx_offset, m.idx_end)
    if bytes(img) == m.data:
        img[lo] ^= 0x40
    return Case(bytes(img), "raw", f"{op} x{n} in {region} at {where[:4]}",
                expect=_pristine_expect(m))


def mut_entry_header(m: Model, rng: random.Random) -> Case:
    entries = _entries_of(m)
    k = rng.randrange(len(entries))
    e = entries[k]
    path = _path_of(m, e.id, rng)
    what = rng.choice(["type", "size", "size+1", "size-1", "size0", "huge size", "long varint",
                       "endless varint"])
    if what == "type":
        e.raw_header = None
        e.kind = rng.choice([k for k in range(8) if k != e.kind])
        if e.kind in (6, 7) and e.base is None:
            e.base = ("ofs_raw", ofs_encode(rng.randrange(1, 1 << 20))) if e.kind == 6 \
                else ("ref", rng.choice(list(m.objects)))
        elif e.kind not in (6, 7) and e.base is not None:
            e.base = None
    elif what == "size":
        e.size = rng.randrange(0, 1 << rng.choice([4, 8, 16, 24]))
    elif what == "size+1":
        e.size += 1
    elif what == "size-1":
        e.size = max(0, e.size - 1)
    elif what == "size0":
        e.size = 0
    elif what == "huge size":
        e.size = rng.choice([1 << 32, (1 << 32) + 1, 1 << 40, (1 << 63) - 1, 1 << 70])
    elif what == "long varint":
        h = bytearray(entry_header(e.kind, e.size))
        h[-1] |= 0x80
        h += b"\x80" * rng.randrange(1, 20) + b"\x00"
        e.raw_header = bytes(h)
    else:
        e.raw_header = bytes([(e.kind << 4) | 0x80]) + b"\xff" * rng.randrange(10, 200) + b"\x01"
    return _entry_case(m, entries, f"entry {k} header: {what}", rng, path=path,
                       damaged=None if what == "long varint" else True)


def mut_delta_base(m: Model, rng: random.Random) -> Case:
    entries = _entries_of(m)
    deltas = [k for k, e in enumerate(entries) if e.base is not None]
    k = rng.choice(deltas) if deltas else rng.randrange(len(entries))
    e = entries[k]
    path = _path_of(m, e.id, rng)
    what = rng.choice(["ofs self", "ofs forward", "ofs huge", "ofs other", "ofs into middle",
                       "ref self", "ref missing", "ref other", "ref to delta", "ofs zero"])
    if what.startswith("ofs"):
        e.kind = OBJ_OFS_DELTA
        e.raw_header = None
        if what == "ofs self":
            e.base = ("ofs_raw", ofs_encode(0))
        elif what == "ofs zero":
            e.base = ("ofs_raw", b"\x00")
        elif what == "ofs forward":
            e.base = ("ofs_raw", b"\xff" * rng.randrange(1, 12) + b"\x7f")
        elif what == "ofs huge":
            e.base = ("ofs_raw", ofs_encode(rng.choice([1 << 31, 1 << 40, 1 << 64])))
        elif what == "ofs into middle":
            e.base = ("ofs_raw", ofs_encode(rng.randrange(1, 40)))
        else:
            e.base = ("ofs", rng.randrange(k)) if k else ("ofs_raw", ofs_encode(1))
    else:
        e.kind = OBJ_REF_DELTA
        e.raw_header = None
        if what == "ref self":
            e.base = ("ref", e.id)
        elif what == "ref missing":
            e.base = ("ref", bytes(rng.getrandbits(8) for _ in range(20)))
        elif what == "ref to delta" and deltas:
            e.base = ("ref", entries[rng.choice(deltas)].id)
        else:
            e.base = ("ref", rng.choice(list(m.objects)))
    return _entry_case(m, entries, f"entry {k} base: {what}", rng, path=path, damaged=None)


def _delta_bomb(base_len: int, result: int) -> bytes:
    """Copy the whole base (up to 64 KiB a copy) again and again."""
    out = bytearray(varint(base_len) + varint(result))
    step = min(base_len, 0x10000) or 1
    copy = bytes([0x80 | 0x10 | 0x20 | 0x40]) + (step & 0xFFFFFF).to_bytes(3, "little")
    if base_len == 0:
        return bytes(out) + (b"\x7f" + b"A" * 127) * 4
    full, rest = divmod(result, step)
    out += copy * full
    if rest:
        out += bytes([0x90 | 0x20 | 0x40]) + rest.to_bytes(3, "little")[:2] + b"\x00"
    return bytes(out)


def mut_delta_data(m: Model, rng: random.Random) -> Case:
    entries = _entries_of(m)
    deltas = [k for k, e in enumerate(entries) if e.base is not None]
    if not deltas:
        return mut_entry_header(m, rng)
    k = rng.choice(deltas)
    e = entries[k]
    path = _path_of(m, e.id, rng)
    base_kind, base = m.objects[entries[e.base[1]].id if e.base[0] == "ofs" else e.base[1]]
    d = bytearray(e.payload)
    what = rng.choice(["base size", "result size", "result huge", "copy out of range",
                       "opcode 0", "truncate", "insert past end", "append", "flip",
                       "bomb", "bomb", "copy len 0"])
    dmg = True
    if what == "base size":
        d = bytearray(varint(len(base) + rng.choice([-1, 1, 1000])) + _skip_sizes(d, 1))
    elif what == "result size":
        _, rs = _delta_sizes(d)
        d = bytearray(varint(len(base)) + varint(max(0, rs + rng.choice([-1, 1, 7])))
                      + _skip_sizes(d, 2))
    elif what == "result huge":
        d = bytearray(varint(len(base)) + varint(rng.choice([1 << 32, 1 << 40, (1 << 64) - 1]))
                      + _skip_sizes(d, 2))
    elif what == "copy out of range":
        d += bytes([0x80 | 0x0F | 0x10]) + b"\xff\xff\xff\x7f\x10"
    elif what == "copy len 0":
        d += b"\x80"
    elif what == "opcode 0":
        d.insert(rng.randrange(len(_skip_sizes(d, 0)) - len(_skip_sizes(d, 2)), len(d)), 0)
    elif what == "truncate":
        d = d[:rng.randrange(len(d))]
    elif what == "insert past end":
        d += b"\x7f" + b"z" * 10
    elif what == "append":
        d += b"\x03abc"
    elif what == "flip":
        at = rng.randrange(len(d))
        d[at] ^= 1 << rng.randrange(8)
        try:
            dmg = apply_delta(base, bytes(d)) != apply_delta(base, e.payload)
        except (ValueError, IndexError):
            dmg = True
    else:
        target = rng.choice([scaled(1 << 30), scaled(3 << 30), (1 << 32) - 1, scaled(200 << 20)])
        d = bytearray(_delta_bomb(len(base), target))
        what = f"bomb of {target} bytes"
    e.payload = bytes(d)
    e.zdata = zlib.compress(e.payload, 9)
    e.size = len(e.payload)
    e.raw_header = None
    return _entry_case(m, entries, f"entry {k} delta: {what}", rng, path=path, damaged=dmg)


def _delta_sizes(d: bytes) -> tuple[int, int]:
    vals, p = [], 0
    for _ in range(2):
        n = s = 0
        while True:
            c = d[p]
            p += 1
            n |= (c & 0x7F) << s
            s += 7
            if not c & 0x80:
                break
        vals.append(n)
    return vals[0], vals[1]


def _skip_sizes(d: bytes, count: int) -> bytes:
    p = 0
    for _ in range(count):
        while d[p] & 0x80:
            p += 1
        p += 1
    return bytes(d[p:])


def mut_zlib(m: Model, rng: random.Random) -> Case:
    entries = _entries_of(m)
    k = rng.randrange(len(entries))
    e = entries[k]
    path = _path_of(m, e.id, rng)
    what = rng.choice(["recompress", "raw deflate", "truncate", "trailing garbage",
                       "bad adler", "stored blocks", "zlib bomb", "zlib bomb", "empty"])
    dmg = True
    if what == "recompress":
        e.zdata = zlib.compress(e.payload, rng.choice([0, 1, 6, 9]))
        dmg = False
    elif what == "stored blocks":
        c = zlib.compressobj(0)
        e.zdata = b"".join(c.compress(e.payload[i:i + 7]) + c.flush(zlib.Z_FULL_FLUSH)
                           for i in range(0, len(e.payload), 7)) + c.flush()
        dmg = False
    elif what == "raw deflate":
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        e.zdata = c.compress(e.payload) + c.flush()
    elif what == "truncate":
        e.zdata = e.zdata[:rng.randrange(len(e.zdata))]
    elif what == "trailing garbage":
        e.zdata = e.zdata + b"garbage"
        dmg = None
    elif what == "bad adler":
        z = bytearray(e.zdata)
        z[-1] ^= 1
        e.zdata = bytes(z)
    elif what == "empty":
        e.zdata = zlib.compress(b"")
    else:
        n = rng.choice([scaled(300 << 20), scaled(1100 << 20), scaled(1600 << 20)])
        e.zdata = _zeros_stream(n)
        e.size = rng.choice([n, n - 1, 100])
        e.base = None
        e.kind = OBJ_BLOB
        e.raw_header = None
        what = f"zlib bomb of {n} zeros, declared {e.size}"
    return _entry_case(m, entries, f"entry {k} zlib: {what}", rng, path=path, damaged=dmg)


def mut_delta_chain(m: Model, rng: random.Random) -> Case:
    """A long chain of deltas of a big base (CPU bomb), appended to a file."""
    entries = _entries_of(m)
    files = [p for p, (mode, _) in m.files.items() if mode != 0o120000]
    path = rng.choice(files)
    oid = m.files[path][1]
    k = next(i for i, e in enumerate(entries) if e.id == oid)
    size = rng.choice([1 << 20, 16 << 20])
    depth = rng.choice([100, 1000, 5000])
    base = Entry(OBJ_BLOB, size, None, _zeros_stream(size), bytes(20))
    new = [base]
    for i in range(depth):
        delta = varint(size) + varint(size) + (_delta_bomb(size, size)[len(varint(size)) * 2:])
        new.append(Entry(OBJ_OFS_DELTA, len(delta), ("ofs", len(entries) + i),
                         zlib.compress(delta), bytes(20), delta))
    # The last link takes the file's place: its id stays the file's.
    for j, n in enumerate(new[:-1]):
        n.id = hashlib.sha1(b"fuzz chain %d" % j).digest()
    new[-1].id = oid
    del entries[k]
    # bases after k shift: ofs bases are indices, so remap
    for e in entries:
        if e.base and e.base[0] == "ofs":
            b = e.base[1]
            if b == k:
                e.base = ("ref", oid)
            elif b > k:
                e.base = ("ofs", b - 1)
    off = len(entries)
    for i, n in enumerate(new[1:]):
        n.base = ("ofs", off + i)
    entries += new
    return _entry_case(m, entries, f"delta chain depth {depth} of {size} bytes at {path}",
                       rng, path=path, damaged=True)


def mut_idx(m: Model, rng: random.Random) -> Case:
    entries = _entries_of(m)
    what = rng.choice(["64-bit offsets", "fanout", "fanout last", "swap ids", "id changed",
                       "crc", "offset", "offset huge", "large index", "large value",
                       "count mismatch"])
    img = bytearray(write_image(entries, m.commit_id, m.block_size(),
                                large_offsets=what in ("64-bit offsets", "large index",
                                                       "large value")))
    mm = Model(bytes(img)) if what != "64-bit offsets" else None
    if what == "64-bit offsets":
        return Case(bytes(img), "entry", "idx: every offset in the 64-bit table",
                    expect=_pristine_expect(m), damaged=False)
    n = mm.n
    k = rng.randrange(n)
    if what == "fanout":
        b = rng.randrange(255)
        struct.pack_into(">I", img, mm.fanout_at + 4 * b, rng.choice([0, n, n + 1, 0xFFFFFFFF]))
    elif what == "fanout last":
        struct.pack_into(">I", img, mm.fanout_at + 4 * 255, rng.choice([0, n - 1, n + 1, 1 << 31]))
    elif what == "swap ids":
        j = rng.randrange(n)
        a, b_ = mm.ids_at + 20 * k, mm.ids_at + 20 * j
        img[a:a + 20], img[b_:b_ + 20] = img[b_:b_ + 20], img[a:a + 20]
    elif what == "id changed":
        img[mm.ids_at + 20 * k + rng.randrange(20)] ^= 1 << rng.randrange(8)
    elif what == "crc":
        struct.pack_into(">I", img, mm.crcs_at + 4 * k, rng.getrandbits(32))
    elif what == "offset":
        struct.pack_into(">I", img, mm.offs_at + 4 * k,
                         rng.choice(mm.offsets + [0, 28, 40, mm.pack_end, mm.idx_offset]))
    elif what == "offset huge":
        struct.pack_into(">I", img, mm.offs_at + 4 * k, rng.randrange(mm.pack_end, 0x7FFFFFFF))
    elif what == "large index":
        struct.pack_into(">I", img, mm.offs_at + 4 * k, 0x80000000 | rng.choice([n, n + 5, 0x7FFFFFFF]))
    elif what == "large value":
        struct.pack_into(">Q", img, mm.large_at + 8 * k,
                         rng.choice([0, 1 << 31, 1 << 40, (1 << 64) - 1, mm.offsets[-1]]))
    else:
        struct.pack_into(">I", img, 36, n + rng.choice([-1, 1, 1000]))
        mm.pack_end = mm.pack_end  # the pack checksum follows the count
    fix_checksums(img, mm.pack_end, mm.idx_offset, mm.idx_end)
    return Case(bytes(img), "entry", f"idx: {what} (slot {k})", forged=True,
                expect=_pristine_expect(m), damaged=True)


# -- object level: edit trees and the commit, rehash up to the header.

class Node:
    """A tree being edited: entries are [mode, name, child] with child an id or a Node."""

    def __init__(self, entries, fixed_id=None):
        self.entries = entries
        self.fixed_id = fixed_id
        self.sort = True


def _nodes(m: Model, tree_id: bytes) -> Node:
    out = []
    for mode, name, child in parse_tree(m.objects[tree_id][1]):
        out.append([mode, name, _nodes(m, child) if mode == 0o40000 and child in m.objects
                    and m.objects[child][0] == OBJ_TREE else child])
    return Node(out)


def _serialize(node: Node, objects: dict, depth: int = 0) -> bytes:
    ents = []
    for mode, name, child in node.entries:
        cid = _serialize(child, objects, depth + 1) if isinstance(child, Node) else child
        ents.append((mode, name, cid))
    if node.sort:
        ents = git_sorted(ents)
    content = encode_tree(ents)
    oid = node.fixed_id or object_id(OBJ_TREE, content)
    objects[oid] = (OBJ_TREE, content)
    return oid


SKIP = "skip"


def _lookup(node: Node, path: str, objects: dict):
    """What a correct reader answers for `path`: (mode, bytes) or None (an error)."""
    parts = [p for p in path.split("/") if p]
    cur = node
    for i, part in enumerate(parts):
        name = part.encode("utf-8", "surrogateescape")
        hits = [e for e in cur.entries if e[1] == name]
        if len(hits) != 1:
            return None
        mode, _, child = hits[0]
        if i < len(parts) - 1:
            if mode != 0o40000 and isinstance(child, Node):
                return SKIP
            if not isinstance(child, Node):
                return None
            cur = child
        else:
            if mode not in (0o100644, 0o100755, 0o120000, 0o40000, 0o160000):
                return SKIP  # modes git tolerates or not: no single right answer
            if isinstance(child, Node) or mode not in (0o100644, 0o100755, 0o120000):
                return None
            obj = objects.get(child)
            if obj is None or obj[0] != OBJ_BLOB:
                return None
            return mode, obj[1]
    return None


def _all_nodes(node: Node, out=None, depth=0):
    out = [] if out is None else out
    out.append((node, depth))
    for e in node.entries:
        if isinstance(e[2], Node):
            _all_nodes(e[2], out, depth + 1)
    return out


_BIG_MESSAGES: dict = {}


def _object_image(m: Model, root: Node, commit_edit=None, extra: dict | None = None,
                  fixed_commit: bytes | None = None) -> tuple[bytes, dict]:
    objects = dict(m.objects)
    objects.update(extra or {})
    tree_id = _serialize(root, objects)
    info = parse_commit(m.objects[m.commit_id][1])
    lines = [b"tree " + tree_id.hex().encode()] + info["lines"][1:]
    message = info["message"]
    if commit_edit:
        lines, message = commit_edit(lines, message)
    content = b"\n".join(lines) + b"\n\n" + message
    cid = fixed_commit or object_id(OBJ_COMMIT, content)
    objects[cid] = (OBJ_COMMIT, content)
    entries = []
    order = sorted(objects, key=lambda i: (objects[i][0], i))
    for oid in order:
        kind, data = objects[oid]
        if len(data) > 1 << 24:  # huge messages: compress once per worker
            if oid not in _BIG_MESSAGES:
                _BIG_MESSAGES[oid] = zlib.compress(data, 1)
            z = _BIG_MESSAGES[oid]
        else:
            z = zlib.compress(data, 1)
        entries.append(Entry(kind, len(data), None, z, oid))
    return write_image(entries, cid, m.block_size()), objects


def mut_tree(m: Model, rng: random.Random) -> Case:
    root = _nodes(m, m.root)
    nodes = _all_nodes(root)
    node, _ = rng.choice(nodes)
    path = rng.choice(sorted(m.files))
    files = [e for e in node.entries]
    e = rng.choice(files) if files else None
    extra = {}
    what = rng.choice(["mode", "name", "id missing", "id to other", "unsorted", "duplicate",
                       "self reference", "ancestor cycle", "explosion", "wide", "empty tree",
                       "deep", "dir as blob", "blob as dir"])
    dmg = None
    if what == "mode" and e:
        e[0] = rng.choice([0, 0o644, 0o100664, 0o100000, 0o160000, 0o40000, 0o120000,
                           0o777777, 0o100755, 0o170000])
        dmg = None
    elif what == "name" and e:
        e[1] = rng.choice([b"", b".", b"..", b"a/b", b"/", b"x" * 5000, b"\xff\xfe",
                           b"nul\x00in", b".git", b"new\nline", e[1] + b"\x00"])
        dmg = e[1] in (b"", b".", b"..", b"a/b", b"/") or b"\x00" in e[1]
    elif what == "id missing" and e:
        e[2] = bytes(rng.getrandbits(8) for _ in range(20))
        dmg = True
    elif what == "id to other" and e:
        e[2] = rng.choice(list(m.objects))
    elif what == "unsorted" and len(node.entries) > 1:
        node.sort = False
        node.entries.reverse()
        dmg = True
    elif what == "duplicate" and e:
        node.entries.append(list(e))
        dmg = True
    elif what in ("self reference", "ancestor cycle"):
        # The tree names itself (or root) under its own unchanged id: only a
        # SHA-1 check or a cycle check can tell.
        old = m.root if what == "ancestor cycle" else None
        node.fixed_id = old or bytes(rng.getrandbits(8) for _ in range(20))
        node.entries.append([0o40000, b"loop", node.fixed_id])
        if what == "ancestor cycle":
            root.fixed_id = m.root
    elif what == "explosion":
        n = rng.choice([20, 40, 61])
        prev = object_id(OBJ_BLOB, b"boom\n")
        extra[prev] = (OBJ_BLOB, b"boom\n")
        mode = 0o100644
        for _ in range(n):
            content = encode_tree([(mode, b"a", prev), (mode, b"b", prev)])
            prev = object_id(OBJ_TREE, content)
            extra[prev] = (OBJ_TREE, content)
            mode = 0o40000
        node.entries.append([0o40000, b"zz-explosion", prev])
        what = f"explosion 2^{n} paths"
    elif what == "wide":
        n = rng.choice([10_000, 200_000, scaled(1_000_000)])
        blob = object_id(OBJ_BLOB, b"")
        extra[blob] = (OBJ_BLOB, b"")
        wide = encode_tree(git_sorted([(0o100644, b"f%07d" % i, blob) for i in range(n)]))
        wid = object_id(OBJ_TREE, wide)
        extra[wid] = (OBJ_TREE, wide)
        node.entries.append([0o40000, b"zz-wide", wid])
        what = f"wide tree of {n} entries"
    elif what == "empty tree":
        node.entries.clear()
    elif what == "deep":
        n = rng.choice([100, 1000, 20000])
        prev = object_id(OBJ_BLOB, b"deep\n")
        extra[prev] = (OBJ_BLOB, b"deep\n")
        content = encode_tree([(0o100644, b"f", prev)])
        prev = object_id(OBJ_TREE, content)
        extra[prev] = (OBJ_TREE, content)
        for _ in range(n):
            content = encode_tree([(0o40000, b"d", prev)])
            prev = object_id(OBJ_TREE, content)
            extra[prev] = (OBJ_TREE, content)
        node.entries.append([0o40000, b"zz-deep", prev])
        what = f"nesting {n} deep"
    elif what == "dir as blob" and e:
        e[0] = 0o100644
        e[2] = _serialize(e[2], extra) if isinstance(e[2], Node) else e[2]
    elif what == "blob as dir" and e:
        e[0] = 0o40000
        if isinstance(e[2], Node):
            e[2] = _serialize(e[2], extra)
    else:
        what = "no-op (" + what + ")"
    image, objects = _object_image(m, root, extra=extra)
    expect = {}
    for p in m.files:
        hit = _lookup(root, p, objects)
        expect[p] = hit  # None: an error is the only right answer
    if what.startswith(("self reference", "ancestor cycle")):
        dmg = True
    return Case(image, "object", f"tree: {what}", damaged=dmg, expect=expect, path=path)


def mut_commit(m: Model, rng: random.Random) -> Case:
    root = _nodes(m, m.root)
    what = rng.choice(["tree line", "tree missing", "tree to blob", "author", "committer",
                       "timezone", "timestamp", "extra header", "no message", "huge message",
                       "huge header", "non-utf8", "parents"])

    lenient = []  # variants git itself accepts: not known damage

    def edit(lines, message):
        lines = list(lines)
        ai = next(i for i, l in enumerate(lines) if l.startswith(b"author "))
        ci = next(i for i, l in enumerate(lines) if l.startswith(b"committer "))
        if what == "tree line":
            lines[0] = rng.choice([b"tree zz", b"tree " + b"0" * 40, b"tree", b"tre " + lines[0][5:],
                                   b"tree " + lines[0][5:].upper(), b"tree " + lines[0][5:45] + b"00"])
            if lines[0][5:].isupper():  # git's get_oid_hex reads upper-case hex too
                lenient.append(1)
        elif what == "tree missing":
            del lines[0]
        elif what == "tree to blob":
            lines[0] = b"tree " + next(i for i, (k, _) in m.objects.items() if k == OBJ_BLOB).hex().encode()
        elif what in ("author", "committer"):
            i = ai if what == "author" else ci
            key = lines[i].split(b" ")[0]
            lines[i] = key + b" " + rng.choice([b"", b"no email 1 +0000", b"x <y> z +0000",
                                                b"x <> 0 +0000", b"x <y 1 +0000", b"<y> 1",
                                                b"x <y> 99999999999999999999999 +0000",
                                                b"x <y> -5 +0000", b"\xff <\xfe> 1 +0000"])
        elif what == "timezone":
            i = rng.choice([ai, ci])
            head = lines[i].rsplit(b" ", 1)[0]
            lines[i] = head + b" " + rng.choice([b"+9999", b"-9999", b"+2400", b"+2500", b"+0060",
                                                b"+99999999999999999999", b"+", b"0000", b"+00",
                                                b"-0000", b"+1400", b"abcd"])
        elif what == "timestamp":
            i = rng.choice([ai, ci])
            name, _, rest = lines[i].rpartition(b"> ")
            tz = rest.split(b" ")[-1]
            lines[i] = name + b"> " + rng.choice([b"0", b"-1", b"253402300800", b"99999999999",
                                                  b"18446744073709551616", b"1e9", b""]) + b" " + tz
        elif what == "extra header":
            lines.insert(ci + 1, rng.choice([b"gpgsig -----BEGIN-----\n x\n -----END-----",
                                            b"encoding ISO-8859-1", b"mergetag object 00",
                                            b" continuation without key"]))
        elif what == "no message":
            message = b""
        elif what == "huge message":
            n = rng.choice([scaled(50 << 20), scaled(400 << 20)])
            message = _big_message(n)
        elif what == "huge header":
            lines.insert(ci + 1, b"x-pad " + b"p" * (rng.choice([1 << 20, scaled(64 << 20)])))
        elif what == "non-utf8":
            message = b"\xff\xfe bytes \x80\n"
        else:
            lines.insert(1, b"parent " + rng.choice(list(m.objects)).hex().encode())
        return lines, message

    image, objects = _object_image(m, root, commit_edit=edit)
    dmg = True if what in ("tree line", "tree missing", "tree to blob") and not lenient else None
    path = rng.choice(sorted(m.files))
    expect = None if dmg or lenient else _pristine_expect(m)
    what += " (upper-case hex)" if lenient else ""
    return Case(image, "object", f"commit: {what}", damaged=dmg, expect=expect, path=path)


def _big_message(n: int) -> bytes:
    return b"m" * (n - 1) + b"\n"


MUTATORS = [
    (mut_raw, 30), (mut_entry_header, 12), (mut_delta_base, 10), (mut_delta_data, 12),
    (mut_zlib, 8), (mut_delta_chain, 1), (mut_idx, 10), (mut_tree, 12), (mut_commit, 8),
]


def make_case(models: dict[str, Model], seed: str, index: int) -> Case:
    rng = random.Random(f"{seed}:{index}")
    m = models[rng.choice(sorted(models))]
    fns, weights = zip(*MUTATORS)
    fn = rng.choices(fns, weights)[0]
    case = fn(m, rng)
    if case.image == m.data:  # a mutation that changed nothing damages nothing
        case.damaged, case.desc = False, case.desc + " (no-op)"
    if case.path is None:
        case.path = rng.choice(sorted(m.files))
    case.base = m
    return case


# ---------------------------------------------------------------------------
# Operations: what runs on each case.

ODD_PATHS = ["", "/", ".", "..", "//", "a//b", "does-not-exist", "/../..", "x" * 5000,
             "\udcff", "README.md/..", "dir0/file1.txt/", "deep/a/b/c/d/e/leaf.txt/x"]


def operations(case: Case, image: str, rng: random.Random) -> list[dict]:
    p = case.path
    if rng.random() < 0.08:  # odd paths: no expected bytes, only a clean answer
        p = case.path = rng.choice(ODD_PATHS)
    m = case.base
    d = rng.choice(m.dirs + [""])
    ops = []
    for mode in ("light", "fast"):
        for ver in (["--no-verify"], []):  # unverified (only a SHA-1 tells), verified
            o = ["--mode", mode] + ver
            ops += [
                {"kind": "cli", "argv": ["ls", *o, image, d], "name": f"ls {mode}{' no-verify' if ver else ''}"},
                {"kind": "cli", "argv": ["cat", *o, image, p], "name": f"cat {mode}{' no-verify' if ver else ''}",
                 "check": "cat", "verify": not ver},
                {"kind": "cli", "argv": ["stat", *o, image, p], "name": f"stat {mode}{' no-verify' if ver else ''}",
                 "check": "stat", "verify": not ver},
                {"kind": "cli", "argv": ["tree", *o, image], "name": f"tree {mode}{' no-verify' if ver else ''}"},
                {"kind": "cli", "argv": ["info", *o, image], "name": f"info {mode}{' no-verify' if ver else ''}"},
            ]
    nv = ["--no-verify"]
    for mode, ver, verb in (("light", nv, ["cat", p]), ("fast", nv, ["cat", p]),
                            ("fast", [], ["cat", p]), ("light", [], ["cat", p]),
                            ("light", nv, ["info"]), ("fast", [], ["tree"]),
                            ("light", nv, ["stat", p])):
        ops.append({"kind": "guest", "argv": [image, "--mode", mode, *ver, *verb],
                    "name": f"guest {verb[0]} {mode}{' no-verify' if ver else ''}",
                    "check": verb[0] if verb[0] in ("cat", "stat") else None, "verify": not ver})
    ops += [
        {"kind": "cli", "argv": ["verify", image], "name": "verify", "check": "accept"},
        {"kind": "cli", "argv": ["verify", "--quick", image], "name": "verify --quick"},
        {"kind": "cli", "argv": ["verify", "--json", image], "name": "verify --json",
         "check": "json"},
        {"kind": "check", "level": "quick", "image": image, "name": "imagecheck quick"},
        {"kind": "check", "level": "full", "image": image, "name": "imagecheck full",
         "check": "accept"},
    ]
    return ops


# ---------------------------------------------------------------------------
# The runner: many operations in one process under the memory cap.

class _Sink(io.RawIOBase):
    """Counts and hashes what a command writes; keeps the first 64 KiB."""

    def __init__(self):
        self.h, self.n, self.head = hashlib.sha1(), 0, bytearray()

    def writable(self):
        return True

    def write(self, b):
        b = bytes(b)
        self.h.update(b)
        self.n += len(b)
        if len(self.head) < 65536:
            self.head += b[:65536 - len(self.head)]
        return len(b)


def _where(tb) -> str:
    frames = traceback.extract_tb(tb)
    mine = [f for f in frames if "docteur_core" in f.filename] or frames
    f = mine[-1]
    return f"{f.filename.split('docteur_core/')[-1]}:{f.lineno} {f.name}"


def runner_main(mem_mb: int) -> None:
    try:  # die with the worker that drives us (Linux), whatever we are computing
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if mem_mb:
        limit = mem_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from docteur_core import cli
    from docteur_core.reader import guest
    from docteur_core.serve import imagecheck
    from docteur_core.blockdev.block import FileDevice
    from docteur_core.errors import DocteurError
    real_out, real_err = sys.stdout, sys.stderr
    for line in sys.stdin:
        op = json.loads(line)
        out, err = _Sink(), _Sink()
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(out), encoding="utf-8",
                                      errors="surrogateescape", write_through=True)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(err), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        res = {"id": op["id"]}
        t0 = time.monotonic()
        try:
            if op["kind"] == "cli":
                code = cli.main(op["argv"])
            elif op["kind"] == "guest":
                code = guest.main(op["argv"])
            else:
                dev = FileDevice(op["image"])
                try:
                    imagecheck.check_image(dev, op["level"])
                    code = 0
                except DocteurError as exc:
                    sys.stderr.write(f"{exc}\n")
                    code = 1
                finally:
                    dev.close()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except MemoryError as exc:
            code = None
            res["exc"] = "MemoryError"
            res["msg"] = str(exc)[:200]
            res["where"] = _where(exc.__traceback__)
        except BaseException as exc:  # noqa: BLE001 - what escaped is the finding
            code = None
            res["exc"] = type(exc).__name__
            res["msg"] = str(exc)[:300]
            res["where"] = _where(exc.__traceback__)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        sys.stdout, sys.stderr = real_out, real_err
        if op.get("check") == "json" and out.n <= len(out.head):
            try:
                json.loads(bytes(out.head).decode("utf-8"))
                res["json_ok"] = True
            except ValueError as exc:
                res["json_ok"] = False
                res["json_error"] = str(exc)[:160]
        res.update(code=code, out_len=out.n, out_sha=out.h.hexdigest(),
                   out_head=out.head[:4096].decode("utf-8", "surrogateescape")
                   .encode("utf-8", "surrogateescape").decode("latin-1"),
                   err=err.head.decode("utf-8", "replace")[:2000],
                   secs=round(time.monotonic() - t0, 4))
        del out, err
        gc.collect()
        proto.write(json.dumps(res) + "\n")


# Seconds a case may take besides its operations' timeouts (building the
# mutated image, starting runners) before the harness calls itself stalled.
CASE_PATIENCE = 300.0


class Runner:
    """A persistent `--runner` subprocess; restarted after a hang or a death."""

    def __init__(self, mem_mb: int, timeout: float):
        self.mem_mb, self.timeout, self.proc = mem_mb, timeout, None

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="0")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--runner", "--mem-mb", str(self.mem_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, text=True, bufsize=1)
        self.buf = ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def _readline(self, deadline: float) -> str | None:
        fd = self.proc.stdout.fileno()
        while "\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""
            self.buf += chunk.decode()
        line, _, self.buf = self.buf.partition("\n")
        return line

    def run(self, ops: list[dict], max_hangs: int = 3) -> list[dict]:
        """One result per operation; after `max_hangs` hangs the rest are skipped
        (a CPU bomb would otherwise cost every entry point the full timeout)."""
        results, i, hangs = [], 0, 0
        while i < len(ops):
            if hangs >= max_hangs:
                results += [{"id": op["id"], "skipped": True} for op in ops[i:]]
                break
            if self.proc is None:
                self.start()
            try:
                for op in ops[i:]:
                    self.proc.stdin.write(json.dumps(op) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            while i < len(ops):
                line = self._readline(time.monotonic() + self.timeout)
                if line is None:
                    results.append({"id": ops[i]["id"], "hang": True})
                    hangs += 1
                    self.stop()
                    i += 1
                    break
                if line == "":
                    self.proc.wait()
                    results.append({"id": ops[i]["id"], "crash": self.proc.returncode})
                    self.proc = None
                    i += 1
                    break
                results.append(json.loads(line))
                i += 1
        return results


# ---------------------------------------------------------------------------
# Classification.

def classify(op: dict, res: dict, case: Case) -> tuple[str, str]:
    """(outcome, detail) for one operation's result."""
    if res.get("skipped"):
        return "skipped", "not run: the case already hung 3 times"
    if res.get("hang"):
        return "hang", "timeout"
    if "crash" in res:
        rc = res["crash"]
        return ("memory" if rc == -signal.SIGKILL else "crash"), f"runner exit {rc}"
    exc = res.get("exc")
    err = res.get("err", "")
    if exc == "MemoryError" or (exc and "allocate" in res.get("msg", "")):
        return "memory", f"{exc} at {res.get('where')}"
    if exc:
        return "traceback", f"{exc}: {res.get('msg', '')[:120]} at {res.get('where')}"
    if "MemoryError" in err or "nable to allocate" in err or "Cannot allocate" in err:
        return "memory", "error message: " + err.strip().splitlines()[0][:160]
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:160]
    code = res.get("code")
    if res.get("json_ok") is False:
        return "wrong", "verify --json wrote invalid JSON: " + res.get("json_error", "")
    if code == 0:
        return judge_success(op, res, case)
    lines = [l for l in err.splitlines() if l.strip()]
    if code == 1 and lines and (len(lines) == 1 or op["name"].startswith(("verify", "imagecheck"))):
        return "clean", lines[0][:160]
    return "noisy", f"exit {code}, {len(lines)} stderr lines: {(lines or [''])[0][:120]}"


def judge_success(op: dict, res: dict, case: Case) -> tuple[str, str]:
    check = op.get("check")
    verify_mode = op.get("verify", False)
    if check in ("cat", "stat") and case.expect is not None and case.path in case.expect:
        exp = case.expect.get(case.path)
        if exp is None and case.family == "object":
            return "wrong", f"answered {res['out_len']} bytes for a path a correct reader refuses"
        if exp is not None and exp != SKIP:
            mode, content = exp
            if check == "cat":
                if res["out_sha"] != hashlib.sha1(content).hexdigest():
                    if case.forged and not verify_mode:
                        return "silent", "different bytes (only a SHA-1 tells)"
                    return "wrong", (f"cat gave {res['out_len']} bytes, the tree's file has "
                                     f"{len(content)}")
            else:
                sizes = re.findall(r"^size: (\d+)$", res["out_head"], re.M)
                if sizes and int(sizes[0]) != len(content):
                    if case.forged and not verify_mode:
                        return "silent", "different size (only a SHA-1 tells)"
                    return "wrong", f"stat size {sizes[0]}, the tree's file has {len(content)}"
    if check == "accept" and case.damaged:
        return "wrong", "accepted an image known damaged"
    return "ok", ""


# ---------------------------------------------------------------------------
# Driver.

_STATE: dict = {}


def _worker_init(bases: dict[str, bytes], seed: str, mem_mb: int, timeout: float,
                 tmpdir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: (_STATE["runner"].stop(), os._exit(0)))
    _STATE["models"] = {k: Model(v) for k, v in bases.items()}
    SCALE[0] = mem_mb / 1024
    _STATE["seed"] = seed
    _STATE["runner"] = Runner(mem_mb, timeout)
    _STATE["dir"] = Path(tempfile.mkdtemp(prefix="w", dir=tmpdir))
    import atexit
    atexit.register(_STATE["runner"].stop)


def run_case(index: int) -> dict:
    seed = _STATE["seed"]
    t0 = time.monotonic()
    try:
        case = make_case(_STATE["models"], seed, index)
    except Exception as exc:  # noqa: BLE001 - a harness bug: report, don't die
        return {"index": index, "error": f"mutation failed: {type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()}
    gen = time.monotonic() - t0
    img = _STATE["dir"] / "case.img"
    img.write_bytes(case.image)
    ops = operations(case, str(img), random.Random(f"{seed}:{index}:ops"))
    for k, op in enumerate(ops):
        op["id"] = k
    results = _STATE["runner"].run(ops)
    rows = []
    bad = False
    for op, res in zip(ops, results):
        outcome, detail = classify(op, res, case)
        bad |= outcome in FAILURES
        rows.append({"op": op["name"], "outcome": outcome, "detail": detail,
                     "secs": res.get("secs"), "argv": op.get("argv")})
    return {"index": index, "family": case.family, "desc": case.desc, "path": case.path,
            "mutation": case.desc.split(":")[0] if ":" in case.desc else case.desc,
            "rows": rows, "gen": gen, "size": len(case.image),
            "image": case.image if bad else None, "secs": time.monotonic() - t0}


def finding_key(result: dict, row: dict) -> str:
    """One distinct failure: outcome, entry point group and where it happened."""
    detail = re.sub(r"\d+", "N", row["detail"])
    group = row["op"].split()[0]
    if row["outcome"] in ("traceback", "memory") and " at " in detail:
        # the exception's type and the innermost docteur_core frame
        detail = detail.split(":")[0].split(" at ")[0] + " at " + detail.rsplit(" at ", 1)[1]
        return f"{row['outcome']} | {detail}"
    return f"{row['outcome']} | {group} | {detail} | {_family_label(result)}"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")[:80]


def save_finding(root: Path, key: str, result: dict, row: dict, image: bytes, seed: str,
                 number: int, mem_mb: int = 1024, timeout: float = 20.0) -> Path:
    d = root / f"{number:03d}-{_slug(key)}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "image.img").write_bytes(image)
    bad = [r for r in result["rows"] if r["outcome"] in FAILURES]
    lines = [f"finding: {key}", f"seed {seed} case {result['index']}: {result['desc']}",
             f"path: {result['path']}", f"image: {len(image)} bytes",
             f"limits: address space {mem_mb} MiB (prlimit --as={mem_mb << 20} CMD), "
             f"timeout {timeout:g} s per operation", "", "failing operations:"]
    for r in bad:
        argv = [("IMAGE" if a.endswith("case.img") else a) for a in (r["argv"] or [])]
        if r["op"].startswith("guest"):
            cmd = "python3 -S -m docteur_core.reader.guest " + " ".join(map(_q, argv))
        elif r["op"].startswith("imagecheck"):
            cmd = (f"python3 -c 'from docteur_core.serve.imagecheck import check_image; "
                   f"from docteur_core.blockdev.block import FileDevice; "
                   f"check_image(FileDevice(\"IMAGE\"), \"{r['op'].split()[1]}\")'")
        else:
            cmd = "docteur " + " ".join(map(_q, argv))
        lines.append(f"  {r['outcome']:9} {r['op']:22} {r['detail']}")
        lines.append(f"            $ {cmd}")
    lines += ["", f"replay: python3 fuzz/fuzz.py --seed {seed} --replay {result['index']} "
              f"--mem-mb {mem_mb} --timeout {timeout:g}"]
    (d / "README.txt").write_text("\n".join(lines) + "\n", errors="backslashreplace")
    return d


def _q(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9_./=-]+", s or "x") else "'" + s.replace("'", "'\\''") + "'"


def parse_budget(text: str) -> tuple[int | None, float | None]:
    if text.endswith("s"):
        return None, float(text[:-1])
    if text.endswith("m"):
        return None, float(text[:-1]) * 60
    return int(text), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--budget", default="500", help="cases (N) or time (Ns, Nm)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--mem-mb", type=int, default=1024, help="RLIMIT_AS of each runner")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per operation")
    ap.add_argument("--workdir", default=str(ROOT / "_work" / "fuzz"))
    ap.add_argument("--findings", default=str(ROOT / "_work" / "fuzz-findings"))
    ap.add_argument("--json", help="write the summary (and every finding) here")
    ap.add_argument("--replay", type=int, help="run one case and print every outcome")
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.runner:
        runner_main(args.mem_mb)
        return 0
    import multiprocessing as mp

    workdir = Path(args.workdir)
    bases = build_bases(workdir / "bases")
    tmp = tempfile.mkdtemp(prefix="docteur-fuzz-")
    findings_dir = Path(args.findings)
    try:
        if args.replay is not None:
            _worker_init(bases, args.seed, args.mem_mb, args.timeout, tmp)
            res = run_case(args.replay)
            _STATE["runner"].stop()
            print(f"case {args.replay}: {res.get('desc')} (path {res.get('path')})")
            for r in res.get("rows", []):
                print(f"  {r['outcome']:9} {r['op']:22} {r['detail']}")
            return 0
        n_cases, seconds = parse_budget(args.budget)
        # forkserver, not fork: workers start from a clean single-threaded
        # process, never from this one while the pool's own threads may
        # hold a lock (a forked worker stuck on such a lock stalled two
        # runs on a loaded machine).
        ctx = mp.get_context("forkserver")
        t0 = time.monotonic()
        counts = collections.Counter()        # outcome
        by_mut = collections.defaultdict(collections.Counter)  # mutation family -> outcome
        by_op = collections.defaultdict(collections.Counter)
        findings: dict[str, dict] = {}
        errors = []
        done = 0
        slow = []
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        with ctx.Pool(args.jobs, _worker_init,
                      (bases, args.seed, args.mem_mb, args.timeout, tmp)) as pool:
            # A window of cases in flight, so that a time budget stops on time
            # and an interrupted run still prints what it saw.
            pending = collections.deque()
            nxt = args.start

            def more() -> bool:
                return (not stop and (n_cases is None or nxt < args.start + n_cases)
                        and (seconds is None or time.monotonic() - t0 < seconds))
            try:
                while True:
                    while len(pending) < 2 * args.jobs and more():
                        pending.append(pool.apply_async(run_case, (nxt,)))
                        nxt += 1
                    if not pending:
                        break
                    try:
                        # A case is bounded (3 hangs of --timeout at most, then
                        # skipped): a worker silent far longer is a stall of
                        # the harness itself, said rather than waited on.
                        res = pending.popleft().get(timeout=CASE_PATIENCE + 4 * args.timeout)
                    except mp.TimeoutError:
                        raise SystemExit(f"fuzz: a worker gave no answer for case "
                                         f"{nxt - len(pending) - 1} in "
                                         f"{CASE_PATIENCE + 4 * args.timeout:g} s: the harness "
                                         "stalled") from None
                    done += 1
                    if "error" in res:
                        errors.append(res)
                        continue
                    slow.append((res["secs"], res["index"], res["desc"]))
                    for row in res["rows"]:
                        counts[row["outcome"]] += 1
                        by_mut[_family_label(res)][row["outcome"]] += 1
                        by_op[row["op"]][row["outcome"]] += 1
                        if row["outcome"] in FAILURES:
                            key = finding_key(res, row)
                            f = findings.get(key)
                            if f is None:
                                f = findings[key] = {"key": key, "count": 0, "cases": [],
                                                     "first": res["index"], "desc": res["desc"],
                                                     "op": row["op"], "detail": row["detail"],
                                                     "argv": row["argv"]}
                                f["dir"] = str(save_finding(findings_dir, key, res, row,
                                                            res["image"], args.seed, len(findings),
                                                            args.mem_mb, args.timeout))
                            f["count"] += 1
                            f.setdefault("ops", set()).add(row["op"])
                            f.setdefault("mutations", set()).add(_family_label(res))
                            if len(f["cases"]) < 5 and res["index"] not in f["cases"]:
                                f["cases"].append(res["index"])
                    if done % 200 == 0:
                        print(f"[{time.monotonic() - t0:7.1f}s] {done} cases, "
                              f"{sum(counts[o] for o in FAILURES)} failing operations, "
                              f"{len(findings)} distinct", file=sys.stderr, flush=True)
            except KeyboardInterrupt:
                print("interrupted: the summary covers the cases finished", file=sys.stderr)
                pool.terminate()
            else:
                # Every case answered: the workers take their sentinel and exit.
                # (Pool.terminate here once left a worker blocked on the task
                # queue's lock and terminate's join waiting on it for good.)
                pool.close()
                pool.join()
        elapsed = time.monotonic() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(done, elapsed, counts, by_mut, by_op, findings, errors, sorted(slow)[-5:])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed": args.seed, "cases": done, "seconds": elapsed, "counts": counts,
            "by_mutation": by_mut, "by_operation": by_op,
            "findings": sorted(findings.values(), key=lambda f: -f["count"]),
            "errors": [{k: v for k, v in e.items()} for e in errors]}, indent=1, default=str))
    failing = sum(counts[o] for o in FAILURES)
    return 1 if failing or errors else 0


def _family_label(res: dict) -> str:
    """The mutation without its numbers: `header: size+N`, `tree: nesting N deep`."""
    d = re.sub(r"^entry \d+ ", "", res["desc"])
    if res["family"] == "raw":
        d = "raw " + d.split(" ")[0] + " in " + d.split(" in ")[1].split(" at ")[0] \
            if " in " in d else "raw " + d.split(" ")[0]
    d = re.sub(r" \(slot \d+\)", "", d)
    d = re.sub(r"\d+", "N", d)
    return d[:42]


def report(done, elapsed, counts, by_mut, by_op, findings, errors, slow) -> None:
    cols = [o for o in OUTCOMES]
    w = 42
    print(f"\n{done} cases, {sum(counts.values())} operations in {elapsed:.1f}s "
          f"({done / max(elapsed, 1e-9):.1f} cases/s)\n")
    for title, table in (("mutation", by_mut), ("operation", by_op)):
        print(f"{title:{w}} " + " ".join(f"{c:>9}" for c in cols))
        for k in sorted(table):
            print(f"{k[:w]:{w}} " + " ".join(f"{table[k][c]:9d}" for c in cols))
        print()
    print(f"{'total':{w}} " + " ".join(f"{counts[c]:9d}" for c in cols))
    print(f"\n{len(findings)} distinct failures:")
    for f in sorted(findings.values(), key=lambda f: -f["count"]):
        print(f"  {f['count']:6d}  {f['key']}")
        print(f"          first: case {f['first']} ({f['desc']}), {f['op']} -> {f['dir']}")
        print(f"          entry points: {', '.join(sorted(f['ops']))}")
        print(f"          mutations: {', '.join(sorted(f['mutations']))[:300]}")
    if errors:
        print(f"\n{len(errors)} harness errors (mutation failed), first: {errors[0]['error']}")
        print(errors[0]["trace"])
    print("\nslowest cases: " + "; ".join(f"{s:.1f}s #{i} {d}" for s, i, d in slow))


if __name__ == "__main__":
    sys.exit(main())
