"""The pack checksum: its trailer, the IDX's copy of it, and the quick hash.

The pack's SHA-1 is computed during the full scan when the pack's end is
known from the IDX; otherwise (quick mode, or an end found by counting
entries) it is computed here in one more sequential pass.
"""

from __future__ import annotations

from ..format import layout
from .report import R_IDX_CHECKSUMS, R_PACK_TRAILER
from .state import State, at_offset, hex_id
from .stream import sha1_of


class Checksums(State):
    """The pack's SHA-1 against its trailer and the IDX's copy of it."""

    def _hash_pack(self) -> None:
        """Quick mode: SHA-1 of [28, trailer) in one sequential pass."""
        if self.trailer_at is None:
            self.problem(R_PACK_TRAILER, "", self.trailer_why or "cannot find the end of the "
                         "pack (the IDX is missing or damaged), so its checksum was not checked")
            return
        self.pack_sha = sha1_of(self.device, layout.PACK_OFFSET, self.trailer_at)

    def _check_trailer(self) -> None:
        """The trailer against the pack's SHA-1, and the IDX's copy against both."""
        self.check("pack-checksum")
        t = self.trailer_at
        if t is None:
            if not self.quick:
                self.problem(R_PACK_TRAILER, "", self.trailer_why or "cannot find the end of "
                             "the pack, so its checksum was not checked")
            return
        if self.pack_sha is None:
            self.pack_sha = sha1_of(self.device, layout.PACK_OFFSET, t)
        stored = self.reader.pread(t, layout.SHA1_SIZE)
        self.pack_intact = stored == self.pack_sha
        idx_bytes, idx_end = self.idx_bytes, self.idx_end
        copy = idx_bytes[-40:-20] if idx_bytes is not None else None
        if stored != self.pack_sha:
            if copy is not None and copy == self.pack_sha:
                self.problem(R_PACK_TRAILER, at_offset(t), "pack trailer differs from the pack's "
                             f"SHA-1 {hex_id(self.pack_sha)} (which the IDX copy matches)")
            else:
                self.problem(R_PACK_TRAILER, at_offset(t), f"the pack's SHA-1 is "
                             f"{hex_id(self.pack_sha)}, its trailer says {hex_id(stored)}")
        if copy is not None:
            assert idx_end is not None  # set with the bytes
            self.check("idx-pack-checksum")
            if copy != stored and stored == self.pack_sha:
                self.problem(R_IDX_CHECKSUMS, at_offset(idx_end - 40),
                             f"IDX copy of the pack checksum {hex_id(copy)} differs from the "
                             f"pack's {hex_id(stored)}")
