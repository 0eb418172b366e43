"""The line `docteur make` ends with: bytes in, bytes out, ratio, objects, deltas, time.

    req.img: 1,104 files, 8.6 MB in -> 341 KB out (4.0%), 432 objects (291 deltas), 2.5 s

The ratio is the image's size in percent of the files' bytes; an image
that is not smaller than them (a few bytes in: an image has a header, an
IDX, padding to the block size and a path index) says by how much it is
larger instead, `27 B in -> 6.7 KB out (larger by 6.7 KB)`.

As mksquashfs ends with its ratio: what the build did, readable at a
glance. The counts come from what was built (the scan's files, the pack's
entries), not from git's progress text, so `--compress max` and repository
sources report the same way. Sizes are decimal (1 KB = 1000 B), like the
status lines.
"""

from __future__ import annotations

import struct

from ..format import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .gitrun import GitRepo


def human_bytes(n: int) -> str:
    """`n` bytes in at most 3 significant digits: 812 B, 9.2 MB, 254 KB, 1.4 GB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 999.5 or unit == "PB":
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    raise AssertionError  # pragma: no cover - the loop always returns


def summary_line(image: str, files: int, bytes_in: int, size: int, objects: int,
                 deltas: int, seconds: float) -> str:
    """The summary line (without the program's name): see the module docstring."""
    if not bytes_in:
        ratio = ""
    elif size <= bytes_in:
        ratio = f" ({100 * size / bytes_in:.1f}%)"
    else:  # a tiny or incompressible input: how much bigger, not 24651.9%
        ratio = f" (larger by {human_bytes(size - bytes_in)})"
    return (f"{image}: {files:,} file{'s' if files != 1 else ''}, "
            f"{human_bytes(bytes_in)} in -> {human_bytes(size)} out{ratio}, "
            f"{objects:,} object{'s' if objects != 1 else ''} "
            f"({deltas:,} delta{'s' if deltas != 1 else ''}), {seconds:.1f} s")


def delta_entries(pack: bytes, offsets: list[int]) -> int:
    """How many of the PACK entries at `offsets` are deltas (OFS_DELTA or REF_DELTA):
    the type is bits 4-6 of each entry's first byte."""
    return sum(1 for off in offsets if (pack[off] >> 4) & 7 in (6, 7))


def idx_offsets(idx: bytes) -> list[int]:
    """Every entry's offset in the PACK, from a `.idx` v2 (64-bit offsets followed)."""
    count = struct.unpack_from(">I", idx, layout.IDX_HEADER_SIZE + 255 * 4)[0]
    small_at = layout.IDX_HEADER_SIZE + 1024 + count * 24
    large_at = small_at + count * 4
    offsets = []
    for (off,) in struct.iter_unpack(">I", idx[small_at:large_at]):
        if off & 0x80000000:
            off = struct.unpack_from(">Q", idx, large_at + 8 * (off & 0x7FFFFFFF))[0]
        offsets.append(off)
    return offsets


def count_deltas(pack_path: str, idx_path: str) -> int:
    """The delta entries of the pack git wrote (one byte read per entry)."""
    with open(idx_path, "rb") as f:
        offsets = sorted(idx_offsets(f.read()))
    deltas = 0
    with open(pack_path, "rb") as f:
        for off in offsets:
            f.seek(off)
            deltas += delta_entries(f.read(1), [0])
    return deltas


def tree_files(repo: GitRepo, tree: str) -> tuple[int, int]:
    """(regular files, their total bytes) in a repository's tree, from `git ls-tree -r -l`."""
    from .gitrun import run_git

    files = total = 0
    for record in run_git(repo, "ls-tree", "-r", "-l", "-z", tree).split(b"\0"):
        if not record:
            continue
        meta = record.split(b"\t", 1)[0].split()
        if meta[0] in (b"100644", b"100755"):
            files += 1
            total += int(meta[3])
    return files, total
