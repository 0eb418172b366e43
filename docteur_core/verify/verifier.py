"""The check as a pipeline: each step given what it needs, returning what it found.

Each step relies on what the previous ones established (the IDX locates
the pack's end, the scan feeds the IDX comparison and the walk), every
problem goes into the one `Report`, and any step may find that nothing
more can be checked (`Stop`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..blockdev.block import BlockDevice, ByteReader
from ..errors import NotAnImage
from ..format import layout
from .checksums import check_trailer, hash_pack
from .idxcheck import check_idx
from .layoutcheck import Header, check_header, check_layout
from .locate import Located, find_lost_idx, locate, locate_trailer
from .pathindexcheck import check_path_index, probe_path_index
from .reach import check_commit
from .report import R_IMAGE, Report
from .scan import scan_pack
from .state import CommitHead, Limits, Stop


@dataclass(frozen=True)
class Verified:
    """What one verification found: the report, and the commit as read
    (what the signature check needs: its id, and its bytes if read)."""

    report: Report
    commit_id: bytes | None
    commit: CommitHead | None


def verify(device: BlockDevice, quick: bool, limits: Limits) -> Verified:
    """Run every check on the image on `device` (the package's docstring)."""
    pread = ByteReader(device).pread
    report = Report(quick=quick, capacity=device.capacity)
    header: Header | None = None
    located: Located | None = None
    commit: CommitHead | None = None
    stats = {"cache_hits": 0, "cache_misses": 0, "rebuilt": 0, "peak_cached_bytes": 0}
    try:
        try:  # a text or a tar is not a damaged image: say so, and only that
            layout.check_is_image(pread, device.capacity)
        except NotAnImage as exc:
            report.problem(R_IMAGE, "", str(exc))
            raise Stop from None
        # The checks below stop where a path index region starts.
        probe = probe_path_index(pread, device.capacity, report)
        capacity = probe.capacity
        header = check_header(pread, capacity, report)
        located = locate(pread, capacity, header, report, quick)
        if not located.pack_ok and located.idx is None:
            # Everything else said so far is noise: say the one thing that matters.
            report.problems.clear()
            report.problem(R_IMAGE, "", "not a docteur image (no PACK at offset 28 "
                           "and no IDX where the header points)")
            raise Stop
        located = locate_trailer(pread, capacity, located, report)
        if quick:
            pack_sha = hash_pack(device, located, report)
            scan = None
        else:
            scan = scan_pack(device, pread, capacity, located, report, limits)
            stats = scan.stats
            pack_sha = scan.pack_sha
            if scan.counted_trailer is not None:
                located = replace(located, trailer_at=scan.counted_trailer)
            if scan.objects.complete:
                located = find_lost_idx(pread, capacity, located, report)
        pack_intact = check_trailer(device, pread, located, pack_sha, report, quick)
        check_idx(located, scan.entries if scan else None, pack_intact, report)
        # The walk and the path index check need the objects only: the
        # per-entry records and the delta bases go before their peaks.
        objects, scanned = (scan.objects, scan.commit) if scan else (None, None)
        del scan
        check_layout(pread, capacity, located, report)
        commit = check_commit(pread, capacity, located, objects, scanned, report,
                              limits.max_paths)
        check_path_index(pread, probe, located, commit, objects, report, limits.max_paths)
    except Stop:
        pass
    if quick:
        report.counts.objects = (located.idx_count or located.pack_count or 0) if located else 0
    stats["cache_hits"] = report.counts.deltas - stats["cache_misses"]
    report.stats = dict(stats)
    return Verified(report, header.commit_id if header else None, commit)
