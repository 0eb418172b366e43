"""The pack checksum: its trailer, the IDX's copy of it, and the quick hash.

The pack's SHA-1 is computed during the full scan when the pack's end is
known from the IDX; otherwise (quick mode, or an end found by counting
entries) it is computed here in one more sequential pass.
"""

from __future__ import annotations

from ..blockdev.block import BlockDevice
from ..format import layout
from .layoutcheck import Pread
from .locate import Located
from .report import R_IDX_CHECKSUMS, R_PACK_TRAILER, Report
from .state import at_offset, hex_id
from .stream import sha1_of


def hash_pack(device: BlockDevice, located: Located, report: Report) -> bytes | None:
    """Quick mode: SHA-1 of [28, trailer) in one sequential pass (None: no trailer)."""
    if located.trailer_at is None:
        report.problem(R_PACK_TRAILER, "", located.trailer_why or "cannot find the end of the "
                       "pack (the IDX is missing or damaged), so its checksum was not checked")
        return None
    return sha1_of(device, layout.PACK_OFFSET, located.trailer_at)


def check_trailer(device: BlockDevice, pread: Pread, located: Located, pack_sha: bytes | None,
                  report: Report, quick: bool) -> bool:
    """The trailer against the pack's SHA-1 (`pack_sha`, computed here when
    None), and the IDX's copy against both. Returns whether the pack is
    intact: its bytes hash to its trailer."""
    report.check("pack-checksum")
    t = located.trailer_at
    if t is None:
        if not quick:
            report.problem(R_PACK_TRAILER, "", located.trailer_why or "cannot find the end of "
                           "the pack, so its checksum was not checked")
        return False
    if pack_sha is None:
        pack_sha = sha1_of(device, layout.PACK_OFFSET, t)
    stored = pread(t, layout.SHA1_SIZE)
    idx_bytes, idx_end = located.idx_bytes, located.idx_end
    copy = idx_bytes[-40:-20] if idx_bytes is not None else None
    if stored != pack_sha:
        if copy is not None and copy == pack_sha:
            report.problem(R_PACK_TRAILER, at_offset(t), "pack trailer differs from the pack's "
                           f"SHA-1 {hex_id(pack_sha)} (which the IDX copy matches)")
        else:
            report.problem(R_PACK_TRAILER, at_offset(t), f"the pack's SHA-1 is "
                           f"{hex_id(pack_sha)}, its trailer says {hex_id(stored)}")
    if copy is not None:
        assert idx_end is not None  # set with the bytes
        report.check("idx-pack-checksum")
        if copy != stored and stored == pack_sha:
            report.problem(R_IDX_CHECKSUMS, at_offset(idx_end - 40),
                           f"IDX copy of the pack checksum {hex_id(copy)} differs from the "
                           f"pack's {hex_id(stored)}")
    return stored == pack_sha
