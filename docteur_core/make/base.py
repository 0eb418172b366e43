"""`make --base OLD.img`: the old image's PACK, checked, handed to git for reuse.

A redeploy changes a few files of many; a full build spends its time in the
delta search over all of them. With a base, the build reuses what OLD
already holds, as stored (whole objects, and deltas whose base is still
wanted, with their zlib bytes), and searches deltas for the new objects
only:

1. `open_base` reads OLD's PACK and IDX and checks them before any byte is
   reused: the image header, the IDX (signature, fanout, its own SHA-1, the
   PACK checksum it copies), the PACK (signature, version, object count
   equal to the IDX's, its trailing SHA-1 over every byte), and the CRC-32
   of every entry against the IDX (entries laid end to end from offset 12
   to the trailer, none overlapping). Any mismatch is one line
   (`BuildError`) before anything is written. Then PACK and IDX are copied
   into the packing repository's `objects/pack/`, where git sees them as
   one more pack. OLD itself is read once, up front: OUTPUT may be OLD
   (the image is written to a temporary file and renamed, as always).
2. The objects of the new commit that OLD lacks go into a second pack,
   whole, at git's own zlib level: a directory's as it is hashed
   (`NewObjectsWriter` skips what OLD holds), a repository's copied out of
   it (`export_missing`, one `git pack-objects --window=0`). So every
   object of the packing repository lies in exactly one pack, and which
   bytes git reuses never depends on how the source stores its objects.
3. The delta search (`parallel`) then runs without `--no-reuse-object`:
   git copies OLD's entries and the new whole objects as they are, keeps
   OLD's deltas whose base is in the same part, and searches deltas for
   the rest (git skips pairs of OLD's own whole objects, which it already
   tried when OLD was built).

The output is a complete image (no thin pack, nothing refers to OLD). Its
bytes are determined by SOURCE (and the commit options), OLD's PACK and
the options, and by nothing else (core count, timing, how a repository
source is packed): the same three give the same image. A different base
gives another image of the same tree.

Trust: a base is checked to the level of its checksums (git checks no
more when it reuses its own packs); an image built by someone you do not
trust can name any bytes under an object id, and a base passes them on.
Use your own previous image, or `docteur verify` it first.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zlib
from dataclasses import dataclass

from ..errors import BuildError, DamagedImage, DocteurError
from ..format import idx as idxmod
from ..format import layout
from ..format.pack import TYPE_NAMES, object_id
from ..format.layout import Pread
from .packwriter import PlainPackWriter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .gitrun import GitRepo

CHUNK = 1 << 20
# git's pack.compression (pinned to -1 in `gitrun`): zlib's default level.
GIT_ZLIB_LEVEL = -1


@dataclass(frozen=True)
class Base:
    """A checked base image, its PACK and IDX copied beside the new objects."""
    path: str  # as the user gave it, for messages
    commit: bytes  # the commit id OLD holds
    ids: frozenset[bytes]  # raw ids of every object in OLD's PACK
    pack_path: str  # its copy in the packing repository


def _damaged(path: str, what: str) -> BuildError:
    return BuildError(f"{path}: the base image is damaged ({what}); nothing was written")


def open_base(path: str, pack_dir: str) -> Base:
    """Check OLD (see the module docstring) and copy its PACK and IDX into `pack_dir`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BuildError(f"{path}: cannot read the base image ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{path}: the base image is not a regular file")
        return _open(fd, st.st_size, path, pack_dir)
    except OSError as exc:
        raise BuildError(f"{path}: cannot read the base image ({exc.strerror})") from None
    finally:
        os.close(fd)


def _open(fd: int, size: int, path: str, pack_dir: str) -> Base:
    def pread(offset: int, length: int) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise _damaged(path, f"{length} bytes at offset {offset} lie past its end "
                                 f"({size} bytes): truncated?")
        return data

    try:
        layout.check_is_image(lambda o, n: os.pread(fd, n, o), size)
        header = layout.parse_header(pread(0, layout.HEADER_SIZE), size)
        idx = idxmod.parse_head(pread(header.idx_offset, idxmod.HEAD_SIZE), header.idx_offset)
        idxmod.check_fits(idx, size)
    except BuildError:
        raise  # pread's own line: already names the base
    except DocteurError as exc:
        raise BuildError(f"{path}: not usable as a base image ({exc}); "
                         "nothing was written") from None
    n = idx.count
    tables = pread(idx.base + idxmod.HEAD_SIZE, 28 * n)
    offsets = list(struct.unpack_from(f">{n}I", tables, 24 * n))
    large = [o & ~idxmod.LARGE_OFFSET_FLAG for o in offsets if o & idxmod.LARGE_OFFSET_FLAG]
    if large and max(large) >= len(large):
        raise _damaged(path, "an IDX 64-bit offset index is out of range")
    large_table = pread(idx.large_at(0), 8 * len(large))
    for i, o in enumerate(offsets):
        if o & idxmod.LARGE_OFFSET_FLAG:
            k = o & ~idxmod.LARGE_OFFSET_FLAG
            offsets[i] = struct.unpack_from(">Q", large_table, 8 * k)[0]
    trailer = pread(idx.trailer_at(len(large)), 40)
    idx_bytes = pread(idx.base, idx.size(len(large)))
    if hashlib.sha1(idx_bytes[:-20]).digest() != idx_bytes[-20:]:
        raise _damaged(path, f"the IDX at offset {idx.base} does not match its own checksum")
    pack_sha = trailer[:20]
    pack_end, why = layout.locate_pack_trailer(pread, header.idx_offset, size, pack_sha)
    if pack_end is None:
        raise _damaged(path, why)
    _check_tail(pread, path, size, pack_end, header.idx_offset,
                header.idx_offset + len(idx_bytes), pack_sha)
    pack_len = pack_end - layout.PACK_OFFSET
    head = pread(layout.PACK_OFFSET, layout.PACK_HEADER_SIZE)
    if head[:4] != layout.PACK_SIGNATURE or struct.unpack_from(">I", head, 4)[0] != 2:
        raise _damaged(path, f"no version 2 PACK at offset {layout.PACK_OFFSET}")
    if struct.unpack_from(">I", head, 8)[0] != n:
        raise _damaged(path, f"its PACK holds {struct.unpack_from('>I', head, 8)[0]} objects, "
                             f"its IDX {n}")
    names = tables[:20 * n]
    crcs = struct.unpack_from(f">{n}I", tables, 20 * n)
    order = sorted(range(n), key=offsets.__getitem__)
    # Entries lie end to end: the first at 12, each ends where the next
    # starts, the last where the trailer does.
    starts = [offsets[i] for i in order]
    ends = starts[1:] + [pack_len - 20]
    if n and starts[0] != layout.PACK_HEADER_SIZE or any(e <= s for s, e in zip(starts, ends)):
        raise _damaged(path, "the IDX's offsets do not lay its entries end to end in the PACK")
    os.makedirs(pack_dir, exist_ok=True)
    name = os.path.join(pack_dir, f"pack-{pack_sha.hex()}")
    _copy_checked(fd, path, name + ".pack", pack_len, starts, ends,
                  [crcs[i] for i in order], [names[20 * i:20 * i + 20] for i in order],
                  pack_sha)
    with open(name + ".idx", "wb") as f:
        f.write(idx_bytes)
    return Base(path, header.commit_id,
                frozenset(names[20 * i:20 * i + 20] for i in range(n)), name + ".pack")


def _check_tail(pread: Pread, path: str, size: int, pack_end: int, idx_offset: int, idx_end: int,
                pack_sha: bytes) -> None:
    """What follows the IDX fits the layout: a truncated or extended image is
    refused even though its PACK and IDX are whole. The padding, or the path
    index region's super block, of version 1 or 2 (its CRC, its copy of the
    PACK checksum, a region that starts where the IDX padding ends); the
    region's pages are not read: a rebuild makes its own."""
    from ..format import pathindex

    if size - idx_end <= layout.MAX_BLOCK_SIZE and layout.fitting_block_sizes(
            pack_end, idx_offset, idx_end, size):
        if layout.last_nonzero(pread, idx_end, size) is not None:
            raise _damaged(path, f"the padding after the IDX (offset {idx_end}) is not zeros")
        return
    if size - idx_end < pathindex.SUPER_SIZE:
        raise _damaged(path, f"{size - idx_end} bytes after the IDX fit no block size: "
                             "truncated?")
    try:
        _, checksum, region_start = pathindex.parse_binding(
            pread(size - pathindex.SUPER_SIZE, pathindex.SUPER_SIZE), size)
    except DamagedImage as exc:
        raise _damaged(path, f"{exc.what}: truncated?") from None
    if checksum != pack_sha or not region_start < size or not layout.fitting_block_sizes(
            pack_end, idx_offset, idx_end, region_start):
        raise _damaged(path, "its path index region does not belong to its PACK and IDX")


def _copy_checked(fd: int, path: str, out_path: str, pack_len: int, starts: list[int],
                  ends: list[int], crcs: list[int], names: list[bytes], pack_sha: bytes) -> None:
    """Copy the PACK to `out_path`, checking its SHA-1 and every entry's CRC-32 on the way."""
    digest = hashlib.sha1()
    k = 0  # the entry being summed
    crc = 0
    with open(out_path, "wb") as out:
        at = 0
        while at < pack_len:
            chunk = os.pread(fd, min(CHUNK, pack_len - at), layout.PACK_OFFSET + at)
            if not chunk:
                raise _damaged(path, "its PACK is truncated")
            out.write(chunk)
            digest.update(chunk[:max(0, pack_len - 20 - at)])
            pos = 0
            while k < len(starts) and pos < len(chunk):
                lo = max(pos, starts[k] - at)
                if lo >= len(chunk):
                    break
                hi = min(len(chunk), ends[k] - at)
                crc = zlib.crc32(chunk[lo:hi], crc)
                pos = hi
                if ends[k] - at <= len(chunk):
                    if crc != crcs[k]:
                        raise _damaged(path, f"the PACK entry of {names[k].hex()} at pack "
                                             f"offset {starts[k]} does not match its CRC-32 "
                                             "in the IDX")
                    k += 1
                    crc = 0
            at += len(chunk)
    if digest.digest() != pack_sha:
        raise _damaged(path, "its PACK does not match its trailing checksum")


class NewObjectsWriter(PlainPackWriter):
    """A directory's objects that the base lacks, whole, at git's zlib level.

    git reuses them as written when it finds no delta for them, so they
    are compressed as pack-objects would compress them; objects the base
    holds are hashed but not written (git takes them from the base).
    """

    zlib_level = GIT_ZLIB_LEVEL

    def __init__(self, path: str, known: frozenset[bytes]) -> None:
        super().__init__(path)
        self._known = known
        self.skipped = 0

    def __contains__(self, sha: bytes) -> bool:
        return sha in self._known or super().__contains__(sha)

    def add(self, type_num: int, data: bytes, sha: bytes | None = None) -> bytes:
        if sha is None:
            sha = object_id(TYPE_NAMES[type_num], data)
        if sha in self._known:
            self.skipped += 1
            return sha
        return super().add(type_num, data, sha)


def export_missing(repo: GitRepo, commit: str, known: frozenset[bytes], pack_base: str) -> int:
    """Copy the objects of `commit` that the base lacks out of repository `repo`.

    One `git pack-objects --window=0 --no-reuse-object` writes them whole
    at git's level into `pack_base`-SHA.pack, whatever the source's own
    packing; returns how many. Nothing is written when there are none.
    """
    from .gitrun import git_through_files, run_git

    listing = run_git(repo, "rev-list", "--objects", "--no-walk", commit)
    missing = [line[:40] for line in listing.split(b"\n")
               if line and bytes.fromhex(line[:40].decode()) not in known]
    if not missing:
        return 0
    import tempfile

    with tempfile.TemporaryFile() as stdin:
        stdin.write(b"".join(sha + b"\n" for sha in missing))
        stdin.seek(0)
        git_through_files(repo, stdin, "pack-objects", "-q", "--no-reuse-object", "--window=0",
                          "--depth=0", "--threads=1", pack_base,
                          failure="copying the objects the base lacks failed: ")
    return len(missing)
