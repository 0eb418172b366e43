"""The delta search on every core, with output that does not depend on how many.

git's own threaded delta search (`pack.threads` > 1) hands work to threads
by timing (an idle thread steals half of the busiest one's list), so its
packs differ from run to run. Here the split is decided before any work,
from the objects alone:

1. the objects of the commit (`rev-list --objects --no-walk`, with names)
   and their types and sizes (`cat-file --batch-check`) are sorted as
   pack-objects sorts its delta candidates: type, then git's hash of the
   path name, then size, all descending (`delta_order`);
2. that list is cut into parts of at least `PART_BYTES` bytes of content
   and `PART_OBJECTS` objects (so that most objects still see a full
   window of 250 candidates), never inside a run of one type and one name
   hash (the versions of one file, which are what deltas pair up)
   (`plan_parts`). The cut points depend on the objects and these two
   constants only — not on the core count;
3. each part is packed by its own `git pack-objects --threads=1`, up to
   `jobs` at a time. A part is contiguous in git's sort order, so within it
   git sorts and searches exactly as it would in the whole list; what is
   lost is only the window across a cut (git's threads lose the same);
4. the parts' packs are joined in a fixed order (the part holding the
   commit first, then by first object in `rev-list` order), into one pack
   and its .idx (`join_packs`). Deltas are OFS_DELTA, relative to their
   entry, so a part's entries are copied unchanged; only the .idx offsets
   move.

Below `PART_BYTES` of content there is one part, and the pack is what a
single `pack-objects` over the whole list makes. Each part's process keeps
only its own objects, so the memory of the delta search is bounded by the
parts running at once, not by the whole tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import tempfile
import time
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Callable, Sequence

from .. import children
from ..errors import BuildError
from ..format.idx import encode_idx_columns
from .gitrun import (DEPTH, WINDOW, GitRepo, git_command, git_env, git_through_files,
                     last_line, start_git)

# About this much object content per part. Fixed: it decides the cut points,
# so changing it changes the images (as any change of the delta search does).
PART_BYTES = 16 << 20
PART_OBJECTS = 2000
# A cut only between two objects this small: a cut costs the deltas across
# it, which matter where big similar files (generated headers) sit together.
CUT_SIZE = 64 << 10

JOBS_ENV = "DOCTEUR_JOBS"

_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
_GIT_SPACE = frozenset(b" \t\n\r")  # git's isspace (sane_ctype: no \v or \f)
CHUNK = 1 << 20


def name_hash(name: bytes) -> int:
    """git's `pack_name_hash` (version 1): the last characters weigh most."""
    h = 0
    for c in name:
        if c in _GIT_SPACE:
            continue
        h = ((h >> 2) + (c << 24)) & 0xFFFFFFFF
    return h


@dataclass(frozen=True, slots=True)
class Obj:
    """One object to pack: its `rev-list` line, type number, size and name hash."""
    line: bytes
    type: int
    size: int
    hash: int


def _order_key(obj: Obj) -> int:
    """One number that sorts as (-type, -hash, -size): one int an object,
    not a tuple of four, for a million-object sort."""
    return -(obj.type << 96 | obj.hash << 64 | obj.size)


def delta_order(objects: Sequence[Obj]) -> list[int]:
    """Indices of `objects` in pack-objects' delta-search order (`type_size_sort`):
    type, name hash, size, all descending, then the index (the sort is stable)."""
    return sorted(range(len(objects)), key=lambda i: _order_key(objects[i]))


def _cut_score(a: Obj, b: Obj) -> int:
    """How unlike two neighbours in git's order are: a cut between unlike ones costs less.

    A type change scores highest (git never deltas across types); else the
    highest bit where the name hashes differ: names that end alike (same
    extension, same suffix) differ only in low bits.
    """
    return 33 if a.type != b.type else (a.hash ^ b.hash).bit_length()


def plan_parts(objects: Sequence[Obj], part_bytes: int = PART_BYTES,
               part_objects: int = PART_OBJECTS) -> list[list[int]]:
    """Cut the objects into parts; each a list of indices in `objects` order.

    A part is a contiguous run of `delta_order`. Once it holds at least
    `part_bytes` bytes and `part_objects` objects, it may end at any place
    where the next object starts a new (type, name hash) run and both
    objects beside the cut are at most `CUT_SIZE` bytes; among the next
    `WINDOW` such places the most unlike neighbours (`_cut_score`, the
    first on a tie) are cut. Parts are ordered by their first index, so the
    part with the first object (the commit) comes first. Pure: the same
    objects give the same parts.
    """
    order = delta_order(objects)
    n = len(order)

    def allowed(k: int) -> bool:  # a cut between order[k - 1] and order[k]
        a, b = objects[order[k - 1]], objects[order[k]]
        return ((a.type, a.hash) != (b.type, b.hash)
                and a.size <= CUT_SIZE and b.size <= CUT_SIZE)

    parts: list[list[int]] = []
    start = 0
    while start < n:
        k, total = start, 0
        while k < n and (total < part_bytes or k - start < part_objects):
            total += objects[order[k]].size
            k += 1
        while k < n and not allowed(k):
            k += 1
        best, best_score = k, -1
        for c in range(k, min(n, k + WINDOW)):
            if allowed(c):
                score = _cut_score(objects[order[c - 1]], objects[order[c]])
                if score > best_score:
                    best, best_score = c, score
        end = best if k < n else n
        parts.append(sorted(order[start:end]))
        start = end
    parts.sort(key=lambda p: p[0])
    return parts


def window_bytes(objects: Sequence[Obj], part: Sequence[int], window: int = WINDOW) -> int:
    """The most content one delta window of `part` holds at once (in git's order).

    git keeps every object of its window, and a delta index of each, in
    memory: this is what a part's pack-objects needs, beyond small change.
    """
    sizes = [objects[i].size for i in sorted(part, key=lambda i: _order_key(objects[i]))]
    best = total = 0
    for n, size in enumerate(sizes):
        total += size
        if n >= window:
            total -= sizes[n - window]
        best = max(best, total)
    return best


def default_jobs() -> int:
    """How many pack-objects run at once: $DOCTEUR_JOBS, else the usable cores."""
    text = os.environ.get(JOBS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise BuildError(f"{JOBS_ENV}={text!r}: expected a whole number of at least 1")
        return int(text)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ObjectList(Sequence[Obj]):
    """The objects to pack, in `rev-list` order, kept in columns.

    A million `Obj`s (and the lines and numbers they hold) cost about
    0.2 KB each; here an object costs its line in one shared `rev-list`
    output plus 21 bytes of numbers. Indexing builds the `Obj` on demand.
    """

    def __init__(self, listing: bytes, starts: array[int], types: array[int],
                 sizes: array[int], hashes: array[int]) -> None:
        self.listing = listing  # rev-list's output, every line ending in "\n"
        self.starts = starts  # where each line starts, and one past the last line
        self.types, self.sizes, self.hashes = types, sizes, hashes

    def __len__(self) -> int:
        return len(self.types)

    def line(self, i: int) -> bytes:
        return self.listing[self.starts[i]:self.starts[i + 1] - 1]

    # An int only, no slices: the planners index one object at a time.
    def __getitem__(self, i: int) -> Obj:  # type: ignore[override]
        return Obj(self.line(i), self.types[i], self.sizes[i], self.hashes[i])


def list_objects(repo: GitRepo, commit: str) -> ObjectList:
    """The commit and everything it reaches, in `rev-list` order, with types and sizes."""
    listing = git_through_files(repo, None, "rev-list", "--objects", "--no-walk", commit)
    if listing and not listing.endswith(b"\n"):
        listing += b"\n"
    starts = array("Q", [0])
    with tempfile.TemporaryFile() as shas:
        at = 0
        while at < len(listing):
            end = listing.index(b"\n", at)
            shas.write(listing[at:at + 40] + b"\n")
            at = end + 1
            starts.append(at)
        shas.seek(0)
        n = len(starts) - 1
        try:
            checked = git_through_files(repo, shas, "cat-file",
                                  "--batch-check=%(objecttype) %(objectsize)")
        except BuildError as exc:
            raise BuildError(f"listing the objects of {commit} failed: {exc}") from None
    answered = checked.count(b"\n")
    if answered != n or (checked and not checked.endswith(b"\n")):
        raise BuildError(f"listing the objects of {commit} failed: git cat-file answered "
                         f"{answered} of {n} objects")
    types, sizes, hashes = array("B"), array("Q"), array("I")
    at = 0
    for i in range(n):
        end = checked.index(b"\n", at)
        check = checked[at:end]
        at = end + 1
        kind, _, size = check.partition(b" ")
        if kind not in _TYPES or not size.isdigit():
            raise BuildError(f"listing the objects of {commit} failed: "
                             f"{check.decode('utf-8', 'replace')}")
        types.append(_TYPES[kind])
        sizes.append(int(size))
        hashes.append(name_hash(listing[starts[i] + 41:starts[i + 1] - 1]))
    return ObjectList(listing, starts, types, sizes, hashes)


def _add_idx(idx: bytes, shift: int, shas: bytearray, offsets: array[int],
             crcs: array[int]) -> None:
    """Append the entries of a version 2 .idx git just wrote to the columns,
    their offsets moved by `shift`."""
    n = struct.unpack_from(">I", idx, 8 + 255 * 4)[0]
    names_at = 8 + 256 * 4
    crcs_at = names_at + 20 * n
    offsets_at = crcs_at + 4 * n
    large_at = offsets_at + 4 * n
    shas += idx[names_at:crcs_at]
    crcs.extend(struct.unpack_from(f">{n}I", idx, crcs_at))
    for (offset,) in struct.iter_unpack(">I", idx[offsets_at:large_at]):
        if offset & 0x80000000:
            offset = struct.unpack_from(">Q", idx, large_at + 8 * (offset & 0x7FFFFFFF))[0]
        offsets.append(offset + shift)


def join_packs(packs: Sequence[str], base: str) -> str:
    """One pack (and .idx) at `base`-SHA.{pack,idx} holding the entries of `packs` in order.

    Each pack's entries are copied as they are (12-byte header and 20-byte
    trailer dropped); the .idx entries keep their CRCs and move by the
    offset their pack's entries now start at. Returns the pack path.
    """
    shas = bytearray()
    offsets = array("Q")
    crcs = array("I")
    count = 0
    for pack in packs:
        with open(pack[:-len(".pack")] + ".idx", "rb") as f:
            count += struct.unpack_from(">I", f.read(8 + 256 * 4), 8 + 255 * 4)[0]
    tmp = base + "-joined.pack"
    h = hashlib.sha1()
    with open(tmp, "wb") as out:
        header = b"PACK" + struct.pack(">II", 2, count)
        out.write(header)
        h.update(header)
        at = len(header)
        for pack in packs:
            with open(pack[:-len(".pack")] + ".idx", "rb") as f:
                _add_idx(f.read(), at - 12, shas, offsets, crcs)
            size = os.path.getsize(pack)
            with open(pack, "rb") as f:
                if f.read(12)[:4] != b"PACK":
                    raise BuildError(f"git pack-objects wrote no pack at {pack}")
                remaining = size - 12 - 20
                while remaining:
                    chunk = f.read(min(CHUNK, remaining))
                    if not chunk:
                        raise BuildError(f"{pack}: shorter than expected")
                    out.write(chunk)
                    h.update(chunk)
                    remaining -= len(chunk)
                    at += len(chunk)
            os.unlink(pack)
            os.unlink(pack[:-len(".pack")] + ".idx")
        checksum = h.digest()
        out.write(checksum)
    try:
        if len(offsets) != count:
            raise ValueError("count")
        idx = encode_idx_columns(shas, offsets, crcs, checksum)
    except ValueError:
        raise BuildError("the packs of the delta search do not add up (an object twice?)")
    path = f"{base}-{checksum.hex()}.pack"
    os.replace(tmp, path)
    with open(path[:-len(".pack")] + ".idx", "wb") as f:
        f.write(idx)
    return path


def pack_objects_parallel(repo: GitRepo, commit: str, base: str,
                          progress: Callable[[str], None] | None,
                          jobs: int | None = None, part_bytes: int | None = None,
                          part_objects: int | None = None, reuse: bool = False) -> str:
    """Pack `commit` and everything it reaches into `base`-SHA.{pack,idx}; the pack path.

    `reuse` (make --base, see `make/base.py`): git may copy entries as the
    repository's packs store them, instead of `--no-reuse-object`.

    The same bytes whatever `jobs` (default: `default_jobs()`). Every git
    process is started from this thread (PR_SET_PDEATHSIG is per thread)
    and killed if the build stops. `part_bytes` and `part_objects`
    (default `PART_BYTES`, `PART_OBJECTS`) are for tests and measurements.
    """
    jobs = default_jobs() if jobs is None else jobs
    part_bytes = PART_BYTES if part_bytes is None else part_bytes
    part_objects = PART_OBJECTS if part_objects is None else part_objects
    objects = list_objects(repo, commit)
    parts = plan_parts(objects, part_bytes, part_objects)
    folder = os.path.dirname(base)
    inputs = []
    for n, part in enumerate(parts):
        path = os.path.join(folder, f"part-{n}.list")
        with open(path, "wb") as f:
            for i in part:  # line by line: a part may name a million objects
                f.write(objects.line(i))
                f.write(b"\n")
        inputs.append(path)
    sizes = [sum(objects.sizes[i] for i in part) for part in parts]
    weights = [window_bytes(objects, part) for part in parts]
    del objects
    # Two parts whose windows both hold big files do not run together: the
    # peak memory stays about that of the heaviest part plus light ones.
    budget = max(weights, default=0) * 5 // 4 + (32 << 20)
    # Biggest parts first, so the last ones to finish are small.
    waiting = sorted(range(len(parts)), key=lambda n: (-sizes[n], n))
    running: dict[int, tuple[subprocess.Popen[bytes], BinaryIO, BinaryIO]] = {}
    done: dict[int, str] = {}
    env = git_env(repo)

    def report() -> None:
        if progress is not None:
            progress(f"Compressing objects: {len(done)} of {len(parts)} parts done, "
                     f"{len(running)} running")

    try:
        report()
        while waiting or running:
            while waiting and len(running) < jobs:
                load = sum(weights[n] for n in running)
                fits = [n for n in waiting if not running or load + weights[n] <= budget]
                if not fits:
                    break
                n = fits[0]
                waiting.remove(n)
                stdin = open(inputs[n], "rb")
                stdout: BinaryIO = open(f"{inputs[n]}.out", "w+b")
                stderr: BinaryIO = open(f"{inputs[n]}.err", "w+b")
                try:
                    proc = start_git(git_command(
                        "pack-objects", "-q", "--delta-base-offset",
                        *(() if reuse else ("--no-reuse-object",)),
                        f"--window={WINDOW}", f"--depth={DEPTH}", "--threads=1",
                        os.path.join(folder, f"part-{n}")),
                        env=env, stdin=stdin, stdout=stdout, stderr=stderr)
                finally:
                    stdin.close()
                running[n] = (proc, stdout, stderr)
            time.sleep(0.02)
            for n in [n for n, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, stdout, stderr = running.pop(n)
                stdout.seek(0)
                stderr.seek(0)
                out, err = stdout.read(), stderr.read()
                stdout.close()
                stderr.close()
                if proc.returncode != 0:
                    raise BuildError(f"git pack-objects failed: {last_line(err)}")
                name = out.decode("ascii", "replace").strip()
                path = os.path.join(folder, f"part-{n}-{name}.pack")
                if not re.fullmatch(r"[0-9a-f]{40}", name) or not os.path.exists(path):
                    raise BuildError(f"git pack-objects wrote no pack ({out[:80]!r})")
                done[n] = path
                report()
    finally:
        for proc, stdout, stderr in running.values():
            children.stop(proc)
            stdout.close()
            stderr.close()
    return join_packs([done[n] for n in range(len(parts))], base)
