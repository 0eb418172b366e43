"""What the plugin checks about an image before serving it, and what it learns.

The plugin must refuse a bad image before any client connects, and must
describe a good one (commit and root tree ids, where the zero padding is):
nbdkit checks every image at start-up and each replaced image on the next
connection.

The checks are `docteur verify`'s, not a second set: `quick` here is
exactly `docteur verify --quick` (header, signatures, counts, padding, the
three checksums, the header's commit: every byte read once, no per-object
work) and `full` is `docteur verify`, so the plugin and the command line
refuse the same images for the same reasons. What stays here is the level
`none` (the header only, for images too big to read at start-up) and
turning a verify report into what the plugin serves.

Levels:
    none   the header only (the IDX offset must point inside the image)
    quick  `docteur verify --quick`
    full   `docteur verify`
"""

from __future__ import annotations

from dataclasses import dataclass

from docteur_core.blockdev.block import BlockDevice, ByteReader
from docteur_core.errors import DamagedImage, DocteurError, WrongCommit
from docteur_core.format import layout
from docteur_core.format.layout import Pread

LEVELS = ("none", "quick", "full")

# Extent types, as nbdkit numbers them (nbdkit.EXTENT_HOLE | EXTENT_ZERO).
EXTENT_DATA = 0
EXTENT_HOLE_ZERO = 3

Extents = tuple[tuple[int, int, int], ...]  # (start, end, type), covering [0, size)


@dataclass(frozen=True)
class ImageInfo:
    size: int
    commit_hex: str
    tree_hex: str | None  # None when the image was not looked into (level none)
    block_size: int  # largest power of two the layout is aligned to
    extents: Extents

    @property
    def description(self) -> str:
        tree = self.tree_hex or "not checked"
        return f"docteur image: commit {self.commit_hex} tree {tree}"


class ImageRejected(DamagedImage):
    """verify found problems: the first is the message, the rest are counted."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
        # verify's own words, without DamagedImage's "damaged image:" prefix;
        # `what` and `where` as every DamagedImage has them.
        self.what, self.where = (lines[0] if lines else "verify failed") + more, None
        DocteurError.__init__(self, self.what)


def check_image(device: BlockDevice, level: str = "quick") -> ImageInfo:
    """Check the image on `device` as `level` says; raise DamagedImage if it is refused."""
    from docteur_core.verify import verify_image

    if level not in LEVELS:
        raise ValueError(f"unknown check level {level!r}")
    size = device.capacity
    if level == "none":
        header = check_header(ByteReader(device).pread, size)
        return ImageInfo(size, header.commit_hex, None,
                         inferred_block_size(header.idx_offset, size),
                         ((0, size, EXTENT_DATA),))
    report = verify_image(device, quick=level == "quick")
    if not report.ok or report.regions is None:
        raise ImageRejected(report.problem_lines())
    pack_end, idx_offset, idx_end = report.regions
    assert report.commit is not None  # an image that checked out names its commit
    return ImageInfo(size, report.commit, report.tree, max(report.block_sizes),
                     zero_extents(size, pack_end, idx_offset, idx_end, report.path_index))


def check_commit(found: str, pinned: str | None, pinned_by: str | None = None,
                 source: str = "the image") -> None:
    """`WrongCommit` (one line) unless the image's commit `found` is the
    `pinned` one (both 40 hex digits; no pin: nothing to check).
    `pinned_by` says where the pin came from ("--commit", "commit=",
    "the URL's name") and `source` names the image, for the message."""
    if pinned is None or found.lower() == pinned.lower():
        return
    raise WrongCommit(f"{source} holds commit {found}, not {pinned.lower()}"
                      + (f" (pinned by {pinned_by})" if pinned_by else " (the pinned commit)"))


def check_header(pread: Pread, size: int) -> layout.Header:
    """The header, and the alignment every docteur layout has (level none)."""
    layout.check_is_image(pread, size)
    head = pread(0, layout.HEADER_SIZE)
    header = layout.parse_header(head, capacity=size)
    if header.idx_offset % layout.MIN_BLOCK_SIZE:
        raise DamagedImage(
            f"IDX offset {header.idx_offset} is not aligned to {layout.MIN_BLOCK_SIZE} bytes",
            "offset 20")
    if size % layout.MIN_BLOCK_SIZE:
        raise DamagedImage(
            f"image size {size} is not a multiple of {layout.MIN_BLOCK_SIZE} bytes "
            "(truncated copy?)", f"offset {size}")
    return header


def inferred_block_size(idx_offset: int, size: int) -> int:
    """The layout pads both the pack and the IDX to the build's block size."""
    return layout.largest_block_size(idx_offset, size)


def zero_extents(size: int, pack_end: int, idx_offset: int, idx_end: int,
                 path_index: tuple[int, int] | None = None) -> Extents:
    """Data, zeros, data, zeros: the layout's regions as NBD extents.

    NBD wants extents in multiples of the minimum block size (512): the
    zeros that share a sector with the pack's or the IDX's end count as data.
    A path index region (start, pages start) adds its leading padding as
    zeros (the whole sectors of it: the pages start anywhere) and its pages
    as data.
    """
    data_end = layout.align_up(pack_end, layout.MIN_BLOCK_SIZE)
    idx_data_end = layout.align_up(idx_end, layout.MIN_BLOCK_SIZE)
    idx_pad_end = size if path_index is None else path_index[0]
    regions = [(0, data_end, EXTENT_DATA), (data_end, idx_offset, EXTENT_HOLE_ZERO),
               (idx_offset, idx_data_end, EXTENT_DATA),
               (idx_data_end, idx_pad_end, EXTENT_HOLE_ZERO)]
    if path_index is not None:
        pages = path_index[0] + (path_index[1] - path_index[0]) \
            // layout.MIN_BLOCK_SIZE * layout.MIN_BLOCK_SIZE
        regions += [(path_index[0], pages, EXTENT_HOLE_ZERO), (pages, size, EXTENT_DATA)]
    return tuple(r for r in regions if r[0] < r[1])


def extents_in(extents: Extents, offset: int, count: int,
               first_only: bool = False) -> list[tuple[int, int, int]]:
    """The (offset, length, type) pieces of `extents` that meet [offset, offset+count)."""
    end = offset + count
    out = []
    for start, stop, typ in extents:
        if stop <= offset or start >= end:
            continue
        lo = max(start, offset)
        out.append((lo, min(stop, end) - lo, typ))
        if first_only:
            break
    return out
