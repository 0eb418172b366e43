"""The image header, the padding, and the block size the layout implies.

These are the checks of the docteur layout itself, not of git's formats:
the 28-byte header (commit id, IDX offset), zero padding between the
regions, and the OCaml builder's padding rule, which is how the block size
(never stored) is inferred. `check_header` is the first step of the check
and returns what the header says; `check_layout` is run once the regions
are located (locate.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..format import idx as idxmod
from ..format import layout
from .report import R_HEADER, R_IMAGE, R_PADDING, Report
from .state import Stop, at_offset, hex_id
from .stream import READ_CHUNK

if TYPE_CHECKING:
    from .locate import Located

Pread = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Header:
    """What the image's 28-byte header says."""

    commit_id: bytes
    idx_offset: int  # as the header says, even if wrong
    idx_at: int | None  # where to look for the IDX: None when the offset cannot be one


def check_header(pread: Pread, capacity: int, report: Report) -> Header:
    """The header's commit id and IDX offset; Stop when the image is too small."""
    report.check("header")
    cap = capacity
    if cap < layout.HEADER_SIZE + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE:
        what = "empty image (0 bytes)" if cap == 0 else \
            f"image of {cap} bytes is too small to hold a header and a PACK"
        report.problem(R_IMAGE, "", what)
        raise Stop
    if cap % layout.MIN_BLOCK_SIZE:
        report.problem(R_IMAGE, "", f"image size {cap} is not a multiple of "
                       f"{layout.MIN_BLOCK_SIZE} bytes (truncated?)")
    raw = pread(0, layout.HEADER_SIZE)
    commit_id = raw[:layout.COMMIT_ID_SIZE]
    (idx_offset,) = struct.unpack_from("<Q", raw, layout.COMMIT_ID_SIZE)
    report.commit = hex_id(commit_id)
    first = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE
    idx_at: int | None = None
    if idx_offset < first:
        report.problem(R_HEADER, at_offset(20),
                       f"IDX offset {idx_offset} lies inside the PACK header")
    elif idx_offset + idxmod.HEAD_SIZE > cap:
        report.problem(R_HEADER, at_offset(20),
                       f"IDX offset {idx_offset} points past the end of the image "
                       f"({cap} bytes): bad offset or truncated image")
    elif idx_offset % layout.MIN_BLOCK_SIZE:
        report.problem(R_HEADER, at_offset(20),
                       f"IDX offset {idx_offset} is not aligned to {layout.MIN_BLOCK_SIZE} bytes")
        idx_at = idx_offset  # still try to read the IDX there
    else:
        idx_at = idx_offset
    return Header(commit_id, idx_offset, idx_at)


def check_layout(pread: Pread, capacity: int, located: Located, report: Report) -> None:
    """Zero padding around the IDX, and a block size the regions' ends fit."""
    report.check("padding")
    t = located.trailer_at
    i = located.idx_offset
    e = located.idx_end
    cap = capacity
    if t is not None and i is not None and t + 20 <= i:
        _zero(pread, t + 20, i, report)
    if e is not None:
        _zero(pread, e, cap, report)
    if t is None or i is None or e is None or located.idx is None:
        return
    report.check("block-size")
    p = t + 20
    sizes = layout.fitting_block_sizes(p, i, e, cap)
    report.block_sizes = sizes
    if sizes:
        report.regions = (p, i, e)
        return
    if p > i:
        report.problem(R_HEADER, at_offset(20),
                       f"IDX offset {i} is inside the pack (ends at {p})")
    elif not 1 <= i - p <= layout.largest_block_size(i, cap) or i % layout.MIN_BLOCK_SIZE:
        report.problem(R_HEADER, at_offset(20), f"IDX offset {i} does not follow the pack "
                       f"(ending at {p}) by the padding of any block size")
    else:
        report.problem(R_IMAGE, at_offset(cap), f"image size {cap} does not end the IDX "
                       f"(ending at {e}) with the padding of a block size that also fits "
                       "the IDX offset (truncated or extended image?)")


def _zero(pread: Pread, start: int, end: int, report: Report) -> None:
    pos = start
    while pos < end:
        n = min(READ_CHUNK, end - pos)
        data = pread(pos, n)
        if not data:
            return
        if data.count(0) != len(data):
            first = pos + len(data) - len(data.lstrip(b"\0"))
            report.problem(R_PADDING, at_offset(first), "padding is not zero")
            return
        pos += len(data)
