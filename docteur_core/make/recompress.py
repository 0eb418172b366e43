"""`--compress max`: re-encode every pack entry's zlib stream with zopfli.

Why: git's delta search is saturated (a bigger window or depth gains
0.2 %), but its zlib streams are not: a zopfli-class deflate encoder makes
the same streams a few percent smaller, and every zlib reader (git's, the
OCaml docteur's, ours) inflates them unchanged. Images are built once and
read many times, so build time is worth spending for bytes when asked.

What changes: only each entry's zlib stream, and only where zopfli's is
strictly shorter (an entry never grows). What is kept byte for byte: the
entry's type, declared size, REF_DELTA base id, and the inflated content
(object or delta instructions). What is recomputed: offsets, OFS_DELTA
distances (their varint can shrink, so offsets are assigned in pack order:
a base always precedes its delta, so its new offset is known when the
delta is written), CRCs, the pack checksum and the .idx.

Determinism: zopfli is deterministic for a given input, iteration count
and library version; entries are re-encoded in parallel but written in
pack order, so the worker count does not change the bytes.

Memory: workers read their entry from the pack file themselves (only
offsets cross process boundaries), at most a few entries per worker are in
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
from typing import TYPE_CHECKING, Callable

from ..errors import BuildError
from ..format.idx import encode_idx_v2
from ..format.pack import MAX_ENTRY_HEADER, OBJ_OFS_DELTA, parse_entry_header
from .pathindex import idx_offsets

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult, Pool

LEVELS = ("default", "max")
DEFAULT_ITERATIONS = 15  # zopfli's own default; fewer is faster and a little bigger
# Entries inflating to more than this keep git's stream: zopfli holds the
# whole input and runs at about 1 MB/s, so bigger ones cost minutes and memory.
MAX_REENCODE = 64 << 20
CHUNK = 1 << 20
MISSING = ("--compress max needs the zopfli package, which is not installed: "
           "pip install 'docteur[max]'")


def check_available(level: str, iterations: int) -> None:
    """Refuse an unknown level or a missing zopfli before any work (one line)."""
    if level not in LEVELS:
        raise BuildError(f"compress {level!r}: choose one of {', '.join(LEVELS)}")
    if level == "max":
        if iterations < 1:
            raise BuildError(f"zopfli iterations {iterations}: must be at least 1")
        try:
            import zopfli.zlib  # noqa: F401
        except ImportError:
            raise BuildError(MISSING) from None


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


def reencode(stream: bytes, iterations: int) -> bytes | None:
    """zopfli's zlib stream for what `stream` inflates to, if strictly shorter; else None.

    Pure: the same bytes and iteration count give the same answer.
    """
    import zopfli.zlib

    d = zlib.decompressobj()
    content = d.decompress(stream)
    if not d.eof or d.unused_data:
        raise BuildError("git wrote a pack entry whose zlib stream does not end where "
                         "the next entry starts")
    new = zopfli.zlib.compress(content, numiterations=iterations)
    return new if len(new) < len(stream) else None


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


def _work(task: tuple[int, int, int]) -> bytes | None:
    start, length, iterations = task
    assert _worker_fd is not None
    return reencode(os.pread(_worker_fd, length, start), iterations)


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


def recompress_pack(pack_path: str, idx_path: str, iterations: int = DEFAULT_ITERATIONS,
                    progress: Callable[[str], None] | None = None,
                    workers: int | None = None,
                    max_reencode: int = MAX_REENCODE) -> tuple[int, int]:
    """Rewrite `pack_path` and `idx_path` in place with zopfli streams; return (old, new) size.

    `workers`: processes to use (default: the CPUs this process may run
    on); the bytes written do not depend on it.
    """
    with open(idx_path, "rb") as f:
        offsets = idx_offsets(f.read())
    old_size = os.path.getsize(pack_path)
    by_offset = sorted((off, sha) for sha, off in offsets.items())
    fd = os.open(pack_path, os.O_RDONLY)
    try:
        head = os.pread(fd, 12, 0)  # PACK, version, count: unchanged
        entries = []
        for i, (off, sha) in enumerate(by_offset):
            end = by_offset[i + 1][0] if i + 1 < len(by_offset) else old_size - 20
            entries.append(_Entry(sha, off, end, os.pread(fd, min(MAX_ENTRY_HEADER, end - off),
                                                          off)))
        out_path = pack_path + ".max"
        new_size = _write(fd, head, entries, out_path, idx_path, iterations, progress,
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


def _results(fd: int, entries: list[_Entry], pool: Pool | None, iterations: int, workers: int,
             max_reencode: int) -> Iterator[bytes | None]:
    """Each entry's new stream (or None: keep git's), in pack order."""
    tasks = [(e.stream_at, e.end - e.stream_at, iterations) if e.size <= max_reencode else None
             for e in entries]
    if pool is None:
        for t in tasks:
            yield None if t is None else reencode(os.pread(fd, t[1], t[0]), iterations)
        return
    window: collections.deque[AsyncResult[bytes | None] | None] = collections.deque()
    it = iter(tasks)
    limit = 4 * workers  # entries in flight: bounds the memory held
    while True:
        while len(window) < limit:
            task = next(it, StopIteration)
            if task is StopIteration:
                break
            window.append(None if task is None else pool.apply_async(_work, (task,)))
        if not window:
            return
        r = window.popleft()
        yield None if r is None else r.get()


def _write(fd: int, head: bytes, entries: list[_Entry], out_path: str, idx_path: str,
           iterations: int, progress: Callable[[str], None] | None, workers: int,
           max_reencode: int) -> int:
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
            if progress is not None:  # it may take minutes: say so at once
                progress(f"Compressing (zopfli, {iterations} iterations): "
                         f"0/{total} entries, 0 bytes saved")
            for i, (e, stream) in enumerate(zip(entries, _results(
                    fd, entries, pool, iterations, workers, max_reencode))):
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
                    progress(f"Compressing (zopfli, {iterations} iterations): "
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
