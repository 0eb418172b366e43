"""`--compress max` and `--compress zopfli`: re-encode every pack entry's zlib stream.

Why: git's delta search is saturated (a bigger window or depth gains
0.2 %), but its zlib streams are not (git writes zlib level 6): a better
deflate encoder makes the same streams a few percent smaller, and every
zlib reader (git's, the OCaml docteur's, ours) inflates them unchanged.

The encoders (`format.encoders`): `max` is libdeflate at level 12, which
gets nearly all of zopfli's gain at a small fraction of its time;
`zopfli` tries libdeflate 12 and then zopfli on every entry and keeps the
shorter (zopfli is used only where it wins), for the last few tenths of a
percent at many times the time.

What changes: only each entry's zlib stream, and only where a candidate is
strictly shorter than git's (an entry never grows; among candidates of the
same length the first listed wins). What is kept byte for byte: the
entry's type, declared size, REF_DELTA base id, and the inflated content
(object or delta instructions). What is recomputed: offsets, OFS_DELTA
distances (their varint can shrink, so offsets are assigned in pack order:
a base always precedes its delta, so its new offset is known when the
delta is written), CRCs, the pack checksum and the .idx.

Determinism: each encoder is deterministic for a given input, level and
library version; entries are re-encoded in parallel, in batches fixed by
the pack alone, but written in pack order, so the worker count does not
change the bytes.

Cost: a batch of small entries is one task (one read of the pack, one
round trip to a worker), so a pack of a million tiny objects pays for its
entries, not for a million task messages.

Memory: workers read their batch from the pack file themselves (only
offsets cross process boundaries), at most a few batches per worker are in
flight, and an entry whose inflated size is over `MAX_REENCODE` keeps git's
stream, copied in chunks.
"""

from __future__ import annotations

import collections
import hashlib
import os
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import BuildError
from ..format.encoders import (DEFAULT_ZOPFLI_ITERATIONS, LIBDEFLATE, MAX_LEVEL, ZOPFLI,
                               Encoder)
from ..format.idx import encode_idx_v2
from ..format.pack import MAX_ENTRY_HEADER, OBJ_OFS_DELTA, parse_entry_header
from .pathindex import idx_offsets

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult, Pool

LEVELS = ("default", "max", "zopfli")
DEFAULT_ITERATIONS = DEFAULT_ZOPFLI_ITERATIONS
# Entries inflating to more than this keep git's stream: the encoders hold
# the whole input (zopfli runs at about 1 MB/s, so bigger ones cost minutes).
MAX_REENCODE = 64 << 20
CHUNK = 1 << 20
# A batch: consecutive entries, up to this many stream bytes or entries
# (one task for a worker). Fixed by the pack alone, like everything else.
BATCH_BYTES = 256 << 10
BATCH_ENTRIES = 256


def encoders_for(level: str, iterations: int = DEFAULT_ITERATIONS) -> tuple[Encoder, ...]:
    """The encoders a --compress level tries on each entry, in order (none: git's streams)."""
    if level == "max":
        return (Encoder(LIBDEFLATE, MAX_LEVEL),)
    if level == "zopfli":
        return (Encoder(LIBDEFLATE, MAX_LEVEL), Encoder(ZOPFLI, iterations))
    return ()


def check_available(level: str, iterations: int) -> None:
    """Refuse an unknown level or a missing library before any work (one line)."""
    if level not in LEVELS:
        raise BuildError(f"compress {level!r}: choose one of {', '.join(LEVELS)}")
    if level == "zopfli" and iterations < 1:
        raise BuildError(f"zopfli iterations {iterations}: must be at least 1")
    missing = sorted({p for e in encoders_for(level, max(iterations, 1))
                      if (p := e.missing()) is not None})
    if missing:
        raise BuildError(f"--compress {level} needs the {' and '.join(missing)} "
                         f"package{'s' if len(missing) > 1 else ''}, which "
                         f"{'are' if len(missing) > 1 else 'is'} not installed: "
                         f"pip install 'docteur[{level}]'")


def encode_ofs_distance(distance: int) -> bytes:
    """Git's OFS_DELTA distance varint (big-endian groups, +1 per continuation)."""
    if distance <= 0:
        raise ValueError(f"OFS_DELTA distance {distance} must be positive")
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def size_varint_len(buf: bytes) -> int:
    """Length of the type+size varint at the start of an entry header."""
    n = 0
    while buf[n] & 0x80:
        n += 1
    return n + 1


def reencode(stream: bytes, encoders: Sequence[Encoder]) -> bytes | None:
    """The shortest of `encoders`' zlib streams for what `stream` inflates to,
    if strictly shorter than `stream`; else None (keep git's).

    Pure: the same bytes and encoders give the same answer.
    """
    d = zlib.decompressobj()
    content = d.decompress(stream)
    if not d.eof or d.unused_data:
        raise BuildError("git wrote a pack entry whose zlib stream does not end where "
                         "the next entry starts")
    best = None
    for encoder in encoders:
        new = encoder.compress(content)
        if len(new) < len(stream) and (best is None or len(new) < len(best)):
            best = new
    return best


def reencode_batch(data: bytes, spans: Sequence[tuple[int, int]],
                   encoders: Sequence[Encoder]) -> list[bytes | None]:
    """`reencode` of each (start, end) slice of `data`: one batch of entries."""
    return [reencode(data[a:b], encoders) for a, b in spans]


# The worker's pack file, opened once per worker process.
_worker_fd: int | None = None


def _init_worker(pack_path: str, tie: Callable[[], None] | None) -> None:
    global _worker_fd
    import signal

    # The parent handles Ctrl-C and SIGTERM (`docteur make` turns SIGTERM into
    # KeyboardInterrupt; a forked worker must not), then terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if tie is not None:
        tie()  # a killed build takes its workers with it
    _worker_fd = os.open(pack_path, os.O_RDONLY)


def _read_batch(fd: int, task: "_Task") -> list[bytes | None]:
    start, end, spans, encoders = task
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise BuildError("the pack is shorter than its .idx says")
    return reencode_batch(data, spans, encoders)


def _work(task: "_Task") -> list[bytes | None]:
    assert _worker_fd is not None
    return _read_batch(_worker_fd, task)


class _Entry:
    __slots__ = ("sha", "offset", "end", "header", "stream_at", "base_offset", "size")

    def __init__(self, sha: bytes, offset: int, end: int, raw: bytes) -> None:
        head = parse_entry_header(raw, f"pack offset {offset}", max_size=None)
        self.sha = sha
        self.offset = offset
        self.end = end
        self.size = head.size
        self.stream_at = offset + head.header_len
        if head.type == OBJ_OFS_DELTA:
            self.header = raw[:size_varint_len(raw)]  # the distance is re-encoded
            assert head.base_distance is not None  # an OFS_DELTA's header has one
            self.base_offset: int | None = offset - head.base_distance
        else:
            self.header = raw[:head.header_len]
            self.base_offset = None


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def recompress_pack(pack_path: str, idx_path: str,
                    encoders: Sequence[Encoder] = (Encoder(LIBDEFLATE, MAX_LEVEL),),
                    progress: Callable[[str], None] | None = None,
                    workers: int | None = None,
                    max_reencode: int = MAX_REENCODE) -> tuple[int, int]:
    """Rewrite `pack_path` and `idx_path` in place with re-encoded streams; return (old, new) size.

    `encoders`: tried in order on every entry, the shortest stream kept
    (`encoders_for`). `workers`: processes to use (default: the CPUs this
    process may run on); the bytes written do not depend on it.
    """
    encoders = tuple(encoders)
    if not encoders:
        raise ValueError("recompress_pack needs at least one encoder")
    with open(idx_path, "rb") as f:
        offsets = idx_offsets(f.read())
    old_size = os.path.getsize(pack_path)
    by_offset = sorted((off, sha) for sha, off in offsets.items())
    del offsets
    fd = os.open(pack_path, os.O_RDONLY)
    try:
        head = os.pread(fd, 12, 0)  # PACK, version, count: unchanged
        entries = []
        for i, (off, sha) in enumerate(by_offset):
            end = by_offset[i + 1][0] if i + 1 < len(by_offset) else old_size - 20
            entries.append(_Entry(sha, off, end, os.pread(fd, min(MAX_ENTRY_HEADER, end - off),
                                                          off)))
        del by_offset
        out_path = pack_path + ".max"
        new_size = _write(fd, head, entries, out_path, idx_path, encoders, progress,
                          workers or _workers(), max_reencode)
    finally:
        os.close(fd)
    os.replace(out_path, pack_path)
    os.replace(idx_path + ".max", idx_path)
    return old_size, new_size


def _start_pool(pack_path: str, workers: int) -> Pool | None:
    """A pool of `workers` processes reading `pack_path`, or None for one worker."""
    if workers <= 1:
        return None
    import multiprocessing

    from ..children import _pdeathsig_setter

    return multiprocessing.get_context("fork").Pool(
        workers, initializer=_init_worker, initargs=(pack_path, _pdeathsig_setter()))


# A batch for a worker: the pack bytes [start, end) to read, each entry's
# stream as a (start, end) slice of them, the encoders.
_Task = tuple[int, int, list[tuple[int, int]], tuple[Encoder, ...]]


def plan_batches(entries: Sequence[_Entry], max_reencode: int,
                 batch_bytes: int = BATCH_BYTES,
                 batch_entries: int = BATCH_ENTRIES) -> list[tuple[int, int] | None]:
    """Runs of consecutive entries to re-encode together, as (first, stop) indices,
    in pack order; None for an entry over `max_reencode` (git's stream is kept).

    A run ends before `batch_entries` entries or once it holds `batch_bytes`
    of streams, so a big entry is a batch of its own. Pure: the same pack
    gives the same batches (they do not change the bytes anyway: each entry
    is encoded on its own).
    """
    out: list[tuple[int, int] | None] = []
    first, held = None, 0
    for i, e in enumerate(entries):
        if e.size > max_reencode:
            if first is not None:
                out.append((first, i))
                first = None
            out.append(None)
            continue
        if first is None:
            first, held = i, 0
        held += e.end - e.stream_at
        if held >= batch_bytes or i + 1 - first >= batch_entries:
            out.append((first, i + 1))
            first = None
    if first is not None:
        out.append((first, len(entries)))
    return out


def _task(entries: Sequence[_Entry], first: int, stop: int,
          encoders: tuple[Encoder, ...]) -> _Task:
    start, end = entries[first].stream_at, entries[stop - 1].end
    return (start, end, [(e.stream_at - start, e.end - start) for e in entries[first:stop]],
            encoders)


def _results(fd: int, entries: list[_Entry], pool: Pool | None,
             encoders: tuple[Encoder, ...], workers: int,
             max_reencode: int) -> Iterator[bytes | None]:
    """Each entry's new stream (or None: keep git's), in pack order."""
    batches = plan_batches(entries, max_reencode)
    if pool is None:
        for b in batches:
            if b is None:
                yield None
            else:
                yield from _read_batch(fd, _task(entries, b[0], b[1], encoders))
        return
    window: collections.deque[AsyncResult[list[bytes | None]] | None] = collections.deque()
    it = iter(batches)
    limit = 4 * workers  # batches in flight: bounds the memory held
    while True:
        while len(window) < limit:
            try:
                batch = next(it)
            except StopIteration:
                break
            window.append(None if batch is None else
                          pool.apply_async(_work, (_task(entries, batch[0], batch[1],
                                                         encoders),)))
        if not window:
            return
        r = window.popleft()
        if r is None:
            yield None
        else:
            yield from r.get()


def _write(fd: int, head: bytes, entries: list[_Entry], out_path: str, idx_path: str,
           encoders: tuple[Encoder, ...], progress: Callable[[str], None] | None,
           workers: int, max_reencode: int) -> int:
    pack_path = out_path[:-len(".max")]
    new_offset: dict[int, int] = {}
    idx_entries = []
    digest = hashlib.sha1()
    total = len(entries)
    pool = _start_pool(pack_path, workers if len(entries) > 1 else 1)
    try:
        with open(out_path, "wb") as out:
            out.write(head)
            digest.update(head)
            pos = len(head)
            saved = 0
            shown = 0.0  # when the progress line was last rewritten
            name = " then ".join(e.describe() for e in encoders)
            if progress is not None:  # it may take minutes: say so at once
                progress(f"Recompressing ({name}): 0/{total} entries, 0 bytes saved")
            for i, (e, stream) in enumerate(zip(entries, _results(
                    fd, entries, pool, encoders, workers, max_reencode))):
                new_offset[e.offset] = pos
                header = e.header
                if e.base_offset is not None:
                    header += encode_ofs_distance(pos - new_offset[e.base_offset])
                crc = zlib.crc32(header)
                out.write(header)
                digest.update(header)
                written = len(header)
                if stream is None:  # git's stream, copied in pieces
                    at = e.stream_at
                    while at < e.end:
                        chunk = os.pread(fd, min(CHUNK, e.end - at), at)
                        if not chunk:
                            raise BuildError(f"{pack_path}: shorter than its .idx says")
                        crc = zlib.crc32(chunk, crc)
                        out.write(chunk)
                        digest.update(chunk)
                        at += len(chunk)
                    written += e.end - e.stream_at
                else:
                    crc = zlib.crc32(stream, crc)
                    out.write(stream)
                    digest.update(stream)
                    written += len(stream)
                    saved += e.end - e.stream_at - len(stream)
                idx_entries.append((e.sha, pos, crc))
                pos += written
                now = time.monotonic()
                if progress is not None and (now - shown >= 0.1 or i + 1 == total):
                    shown = now
                    progress(f"Recompressing ({name}): "
                             f"{i + 1}/{total} entries, {saved:,} bytes saved")
            checksum = digest.digest()
            out.write(checksum)
            pos += 20
        with open(idx_path + ".max", "wb") as f:
            f.write(encode_idx_v2(idx_entries, checksum))
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        for p in (out_path, idx_path + ".max"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        raise
    return pos
