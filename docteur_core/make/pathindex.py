"""The builder's side of the path index: what git knows, encoded once.

`git ls-tree -r -t -l -z` lists every path of the commit with its mode and
id, a tree's entries in its order, from which each distinct tree's rows are
taken once; the pack's own .idx gives every object's position and offset. Both are deterministic, so the region is too (same source, same
bytes). The format is `format/pathindex.py`.
"""

from __future__ import annotations

import struct

from ..errors import BuildError
from ..format import layout
from ..format import pathindex as pix
from ..format.objects import MODE_DIR

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


def trees_of(listing: list[tuple[bytes, int, bytes, int | None]], root: bytes
             ) -> dict[bytes, pix.TreeRows]:
    """tree id -> its rows (mode, name, id) in the tree's order, from the
    listing (`ls-tree -r -t` names every path, a tree's entries in its
    order); each distinct tree once."""
    tree_at: dict[bytes, bytes] = {b"": root}
    rows: dict[bytes, pix.TreeRows] = {root: []}
    filling: dict[bytes, pix.TreeRows | None] = {b"": rows[root]}
    for path, mode, oid, _ in listing:
        parent, _, name = path.rpartition(b"/")
        target = filling.get(parent)
        if mode == MODE_DIR:
            tree_at[path] = oid
            if target is not None and oid not in rows:
                rows[oid] = []
                filling[path] = rows[oid]
            else:
                filling[path] = None  # a tree already met: its rows are known
        if target is not None:
            if mode not in pix.MODES:
                raise BuildError(f"{path!r}: mode {mode:o} cannot be indexed")
            target.append((mode, name, oid))
    return rows


def build_region(repo: GitRepo, commit: str, tree: str, pack_path: str, idx_path: str,
                 block_size: int, region_start: int) -> bytes:
    """The path index region of the image being written."""
    from .gitrun import run_git

    with open(idx_path, "rb") as f:
        idx = f.read()
    offsets = idx_offsets(idx)
    positions = {oid: i for i, oid in enumerate(offsets)}
    with open(pack_path, "rb") as f:
        f.seek(-20, 2)
        pack_checksum = f.read(20)
        pack_size = f.tell()
    listing = parse_ls_tree(run_git(repo, "ls-tree", "-r", "-t", "-l", "-z", "--full-tree",
                                    commit))
    commit_id, tree_id = bytes.fromhex(commit), bytes.fromhex(tree)
    rows = trees_of(listing, tree_id)

    def offset_of(oid: bytes) -> int:
        off = offsets.get(oid)
        if off is None:
            raise BuildError(f"object {oid.hex()} is not in the pack")
        return layout.PACK_OFFSET + off

    def position_of(oid: bytes) -> int:
        pos = positions.get(oid)
        if pos is None:
            raise BuildError(f"object {oid.hex()} is not in the pack")
        return pos

    try:
        return pix.encode(tree_id, rows.__getitem__, position_of, offset_of,
                          commit=commit_id, pack_checksum=pack_checksum,
                          commit_offset=offset_of(commit_id), tree_offset=offset_of(tree_id),
                          pack_end=layout.PACK_OFFSET + pack_size - 20,
                          region_start=region_start, block_size=block_size)
    except ValueError as exc:
        raise BuildError(f"path index: {exc}") from None
