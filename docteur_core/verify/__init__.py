"""Prove what an image holds and that not one byte of it is wrong.

`verify_image(device)` reads a whole image through the block interface (a
file, a raw device or an NBD export) and returns a `Report`: the commit the
image holds, counts, and every problem found, each naming the region of the
image it lies in (header, PACK entries, IDX tables, padding...) and where
(an offset or an object id). It keeps going after a problem wherever it can,
so that one run tells everything, and it never trusts a size, a distance or a
count enough to crash, hang or allocate without bound.

How the full check works, and why it is fast:

1. The header, then the IDX (read once, whole: it is small), whose offsets
   give every entry's start. They let the pack scan resynchronise after a
   damaged entry instead of giving up, and give the pack's end: the trailer is
   found by looking for the IDX's copy of the pack checksum just before the
   IDX, so a wrong object count in the PACK header cannot derail the scan.
2. One sequential pass over the pack in large aligned reads: every entry
   header is parsed, every zlib stream inflated (to exactly its declared
   size), the pack SHA-1 and each entry's CRC-32 computed over the bytes
   as they pass. Base objects are hashed as they come (big blobs are hashed
   while they inflate and never held whole); deltas are applied to their
   base, which comes from a bounded LRU of recently rebuilt objects or, on a
   miss, is rebuilt again from the device (git writes bases before their
   deltas, so the LRU nearly always hits). Trees and the commit are parsed.
   An entry whose end the IDX gives (the next entry's start) is inflated in
   one call and its CRC-32 taken in one more; anything unusual goes to the
   careful path, which streams the entry and says precisely what is wrong.
   Small blobs, the bulk of a pack, take a fast lane: checked against their
   IDX row (id and CRC-32) as they are scanned, and then remembered as one
   byte of a column rather than as records in four dicts.
3. The IDX is compared with what the scan saw: sorted ids, fanout, every
   offset at an entry start, every CRC, every id equal to the SHA-1 of the
   object at its offset (the Merkle check), the same set of objects.
4. The commit named by the header must be there and be a commit; its tree is
   walked: everything it reaches must be present (gitlinks excepted); objects
   nothing reaches are warnings.
   The path index region, when there is one, is rebuilt from the same
   walk and compared a node at a time (pathindexcheck.py).
5. The padding regions must be zero, and the layout must follow the OCaml
   builder's padding rule for some block size.

The block size is not stored in an image. An image is consistent with block
size B (a power of two from 512 to 1 GiB, `layout.valid_block_size`) when the IDX offset and the image
size are multiples of B, and the padding after the pack and after the IDX
are each 1..B bytes (the OCaml builder always pads with `B - n % B` bytes,
a whole block when `n` is already aligned). Several B can fit the same
image (a small padding fits every B up to the alignment); `Report.block_sizes`
lists them all, and the header check fails only when none fits.

`quick=True` checks the header, the signatures, the counts, the padding and
the three checksums (pack SHA-1, the IDX's copy of it, the IDX's own SHA-1):
it reads every byte once and does no per-object work.

Standard library only: this runs beside the guest reader and inside the
nbdkit plugin.

The modules, in the order the checks run (verifier.py is the pipeline:
each step a function given what it needs, returning a value, recording
problems in the one Report): report.py (Report, region names), state.py
(limits and the values the steps pass on), stream.py (sequential hashed
reads), pathindexcheck.py (probe first, check last), layoutcheck.py
(header, padding, block size), locate.py (IDX, PACK header, trailer:
`Located`), scan.py (the pass over every entry: `ScanResult`) with
bases.py (delta bases: plan, LRU, rebuild), checksums.py (pack SHA-1),
idxcheck.py (IDX against the pack), reach.py (commit, tree walk,
unreachable objects).
"""

from __future__ import annotations

from ..blockdev.block import BlockDevice
from ..format import limits
from .report import Counts, Problem, Report, format_problem
from .state import (DEFAULT_CACHE_BYTES, MAX_DELTA_DEPTH, MAX_HELD_OBJECT, STREAM_THRESHOLD,
                    Limits)
from .verifier import verify

__all__ = ["Counts", "Problem", "Report", "format_problem", "verify_image",
           "DEFAULT_CACHE_BYTES", "MAX_DELTA_DEPTH", "MAX_HELD_OBJECT", "STREAM_THRESHOLD"]


def verify_image(device: BlockDevice, quick: bool = False, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 max_object_size: int = MAX_HELD_OBJECT,
                 max_paths: int = limits.MAX_PATHS,
                 max_lookup_bytes: int = limits.MAX_LOOKUP_BYTES,
                 commit: str | None = None,
                 allowed_signers: str | None = None) -> Report:
    """Check everything about the image on `device` (see the module docstring).

    The limits are the reader's (format/limits.py): an object over
    `max_object_size` that must be held, trees naming more than `max_paths`
    paths, a delta base whose rebuild takes more than `max_lookup_bytes`
    are problems, found before the memory or work is spent.
    Never raises for damage, only for I/O errors of the device itself
    (`DeviceError`), and for what the caller asked it to trust (see `trust`):
    `commit` (40 hex digits): the header must name it, compared before
    anything else is read; another is `WrongCommit`. `allowed_signers` (a
    file in git's allowed signers format; host only, it runs ssh-keygen):
    the commit must be signed by one of its keys, else `WrongCommit` once
    the commit has been read and hashed (its `report` attribute holds the
    report). `Report.signature` says what the signature is, checked
    against `allowed_signers` when given (otherwise a signed commit is
    "unknown": signed, not checked).
    """
    from .trust import check_pin, judge_signature, ready

    ready(allowed_signers)
    if commit is not None:
        check_pin(device, commit)
    v = verify(device, quick, Limits(cache_bytes, max_object_size, max_paths, max_lookup_bytes))
    v.report.pin = commit
    judge_signature(v, allowed_signers)
    return v.report
