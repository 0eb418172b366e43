"""The image header, the padding, and the block size the layout implies.

These are the checks of the docteur layout itself, not of git's formats:
the 28-byte header (commit id, IDX offset), zero padding between the
regions, and the OCaml builder's padding rule, which is how the block size
(never stored) is inferred.
"""

from __future__ import annotations

import struct

from ..format import idx as idxmod
from ..format import layout
from .report import R_HEADER, R_IMAGE, R_PADDING
from .state import State, Stop, at_offset, hex_id
from .stream import READ_CHUNK


class LayoutChecks(State):
    """The docteur header and padding rules (the first and last checks run)."""

    def _check_header(self) -> None:
        self.check("header")
        cap = self.capacity
        if cap < layout.HEADER_SIZE + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE:
            what = "empty image (0 bytes)" if cap == 0 else \
                f"image of {cap} bytes is too small to hold a header and a PACK"
            self.problem(R_IMAGE, "", what)
            raise Stop
        if cap % layout.MIN_BLOCK_SIZE:
            self.problem(R_IMAGE, "", f"image size {cap} is not a multiple of "
                         f"{layout.MIN_BLOCK_SIZE} bytes (truncated?)")
        raw = self.reader.pread(0, layout.HEADER_SIZE)
        commit_id = raw[:layout.COMMIT_ID_SIZE]
        (idx_offset,) = struct.unpack_from("<Q", raw, layout.COMMIT_ID_SIZE)
        self.commit_id = commit_id
        self.header_idx_offset = idx_offset
        self.report.commit = hex_id(commit_id)
        first = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE
        if idx_offset < first:
            self.problem(R_HEADER, at_offset(20),
                         f"IDX offset {idx_offset} lies inside the PACK header")
        elif idx_offset + idxmod.HEAD_SIZE > cap:
            self.problem(R_HEADER, at_offset(20),
                         f"IDX offset {idx_offset} points past the end of the image "
                         f"({cap} bytes): bad offset or truncated image")
        elif idx_offset % layout.MIN_BLOCK_SIZE:
            self.problem(R_HEADER, at_offset(20),
                         f"IDX offset {idx_offset} is not aligned to {layout.MIN_BLOCK_SIZE} bytes")
            self.idx_offset = idx_offset  # still try to read the IDX there
        else:
            self.idx_offset = idx_offset

    def _check_layout(self) -> None:
        self.check("padding")
        t = self.trailer_at
        i = self.idx_offset
        e = self.idx_end
        cap = self.capacity
        if t is not None and i is not None and t + 20 <= i:
            self._zero(t + 20, i)
        if e is not None:
            self._zero(e, cap)
        if t is None or i is None or e is None or self.idx is None:
            return
        self.check("block-size")
        p = t + 20
        sizes = layout.fitting_block_sizes(p, i, e, cap)
        self.report.block_sizes = sizes
        if sizes:
            self.report.regions = (p, i, e)
            return
        if p > i:
            self.problem(R_HEADER, at_offset(20),
                         f"IDX offset {i} is inside the pack (ends at {p})")
        elif not 1 <= i - p <= layout.largest_block_size(i, cap) or i % layout.MIN_BLOCK_SIZE:
            self.problem(R_HEADER, at_offset(20), f"IDX offset {i} does not follow the pack "
                         f"(ending at {p}) by the padding of any block size")
        else:
            self.problem(R_IMAGE, at_offset(cap), f"image size {cap} does not end the IDX "
                         f"(ending at {e}) with the padding of a block size that also fits "
                         "the IDX offset (truncated or extended image?)")

    def _zero(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(READ_CHUNK, end - pos)
            data = self.reader.pread(pos, n)
            if not data:
                return
            if data.count(0) != len(data):
                first = pos + len(data) - len(data.lstrip(b"\0"))
                self.problem(R_PADDING, at_offset(first), "padding is not zero")
                return
            pos += len(data)
