"""The order in which the checks run, over the parts of this package.

Each step relies on what the previous ones established (the IDX locates
the pack's end, the scan feeds the IDX comparison and the walk), and any
step may find that nothing more can be checked (`Stop`).
"""

from __future__ import annotations

from ..errors import NotAnImage
from ..format import layout
from .bases import Bases
from .checksums import Checksums
from .idxcheck import IdxCheck
from .layoutcheck import LayoutChecks
from .locate import Locate
from .pathindexcheck import PathIndexCheck
from .reach import Reach
from .report import R_IMAGE
from .scan import Scan
from .state import Stop


class Verifier(LayoutChecks, Locate, Checksums, Scan, Bases, IdxCheck, Reach, PathIndexCheck):
    """One verification of one image: `run()` once, then read `report`."""

    def run(self) -> None:
        try:
            try:  # a text or a tar is not a damaged image: say so, and only that
                layout.check_is_image(self.reader.pread, self.capacity)
            except NotAnImage as exc:
                self.problem(R_IMAGE, "", str(exc))
                raise Stop from None
            self._probe_path_index()  # the checks below then stop where it starts
            self._check_header()
            self._load_idx()
            self._check_pack_header()
            if not self.pack_ok and self.idx is None:
                # Everything else said so far is noise: say the one thing that matters.
                self.report.problems.clear()
                self.problem(R_IMAGE, "", "not a docteur image (no PACK at offset 28 "
                             "and no IDX where the header points)")
                raise Stop
            self._locate_trailer()
            if self.quick:
                self._hash_pack()
            else:
                self._scan_pack()
                self._resolve_pending()
                self._count()
            self._find_lost_idx()
            self._check_trailer()
            self._check_idx()
            self._release_scan()
            self._check_layout()
            self._check_commit()
            self._check_path_index()
        except Stop:
            pass
        if self.quick:
            self.report.counts.objects = self.idx_count or self.pack_count or 0
        self.stats["cache_hits"] = self.report.counts.deltas - self.stats["cache_misses"]
        self.report.stats = dict(self.stats)
