"""The builder's side of the path index: what git knows, encoded once.

`git ls-tree -r -t -l -z` lists every path of the commit with its mode, id
and (for a blob) content size; the pack's own .idx gives every object's
offset. Both are deterministic, so the region is too (same source, same
bytes). The format is `format/pathindex.py`.
"""

from __future__ import annotations

import struct

from ..errors import BuildError
from ..format import layout
from ..format import pathindex as pix
from ..format.objects import MODE_DIR, MODE_GITLINK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .gitrun import GitRepo


def idx_offsets(idx: bytes) -> dict[bytes, int]:
    """raw id -> offset in the pack, from a version 2 .idx's bytes."""
    n = struct.unpack_from(">I", idx, layout.IDX_HEADER_SIZE + 255 * 4)[0]
    names_at = layout.IDX_HEADER_SIZE + layout.FANOUT_SIZE
    offsets_at = names_at + n * 24  # names (20 each), CRCs (4 each)
    large_at = offsets_at + n * 4
    out = {}
    for i in range(n):
        name = idx[names_at + 20 * i:names_at + 20 * i + 20]
        value = struct.unpack_from(">I", idx, offsets_at + 4 * i)[0]
        if value & 0x80000000:
            value = struct.unpack_from(">Q", idx, large_at + 8 * (value & 0x7FFFFFFF))[0]
        out[name] = value
    return out


def parse_ls_tree(listing: bytes) -> list[tuple[bytes, int, bytes, int | None]]:
    """(path, mode, raw id, blob size or None) per record of `ls-tree -r -t -l -z`."""
    out = []
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _, oid, size = meta.split(None, 3)
        size = size.strip()
        out.append((path, int(mode, 8), bytes.fromhex(oid.decode()),
                    None if size == b"-" else int(size)))
    return out


def entries_of(listing: list[tuple[bytes, int, bytes, int | None]],
               offsets: dict[bytes, int]) -> tuple[list[pix.Entry], int]:
    """The index's entries and the root's entry count."""
    counts: dict[bytes, int] = {}
    for path, _, _, _ in listing:
        parent = path.rpartition(b"/")[0]
        counts[parent] = counts.get(parent, 0) + 1
    entries = []
    for path, mode, oid, size in listing:
        if mode not in pix.MODES:
            raise BuildError(f"{path!r}: mode {mode:o} cannot be indexed")
        if mode == MODE_GITLINK:
            entries.append(pix.Entry(pix.key_of(path), mode, oid, 0, 0))
            continue
        off = offsets.get(oid)
        if off is None:
            raise BuildError(f"{path!r}: object {oid.hex()} is not in the pack")
        if mode == MODE_DIR:
            size = counts.get(path, 0)
        entries.append(pix.Entry(pix.key_of(path), mode, oid, layout.PACK_OFFSET + off, size))
    return entries, counts.get(b"", 0)


def build_region(repo: GitRepo, commit: str, tree: str, pack_path: str, idx_path: str,
                 block_size: int, region_start: int) -> bytes:
    """The path index region of the image being written."""
    from .gitrun import run_git

    with open(idx_path, "rb") as f:
        offsets = idx_offsets(f.read())
    with open(pack_path, "rb") as f:
        f.seek(-20, 2)
        pack_checksum = f.read(20)
        pack_size = f.tell()
    listing = parse_ls_tree(run_git(repo, "ls-tree", "-r", "-t", "-l", "-z", "--full-tree",
                                    commit))
    entries, root_count = entries_of(listing, offsets)
    commit_id, tree_id = bytes.fromhex(commit), bytes.fromhex(tree)
    try:
        return pix.encode(entries, commit=commit_id, pack_checksum=pack_checksum,
                          tree=tree_id,
                          commit_offset=layout.PACK_OFFSET + offsets[commit_id],
                          tree_offset=layout.PACK_OFFSET + offsets[tree_id],
                          pack_end=layout.PACK_OFFSET + pack_size - 20,
                          region_start=region_start, root_count=root_count,
                          block_size=block_size)
    except ValueError as exc:
        raise BuildError(f"path index: {exc}") from None
