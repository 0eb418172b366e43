"""The builder's side of the path index: what git knows, encoded once.

Each distinct tree's rows are read from the scratch repository when the
encoder asks for them (one `git cat-file --batch` for the whole region),
and an object's IDX position and pack offset are looked up in the pack's
own .idx (a binary search in its sorted names). Nothing is kept per path or
per object: the builder's memory is that of one tree at a time plus the
encoder's few numbers per tree, whatever the number of files (a listing of
every path, and tables keyed by every object, cost about 0.5 KB an object:
half a gigabyte at a million files). Both inputs are deterministic, so the
region is too (same source, same bytes). The format is `format/pathindex.py`.
"""

from __future__ import annotations

import bisect
import struct
import subprocess

from ..errors import BuildError
from ..format import layout
from ..format import pathindex as pix
from ..format.objects import parse_tree_raw

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


class IdxTable:
    """Position and pack offset of an object, looked up in a version 2 .idx's bytes.

    The names table is sorted, and the fan-out says where each first byte's
    names start: a lookup is a binary search of about log2(n / 256) steps,
    with no table built beside the .idx.
    """

    def __init__(self, idx: bytes) -> None:
        self.idx = idx
        self.count: int = struct.unpack_from(">I", idx, layout.IDX_HEADER_SIZE + 255 * 4)[0]
        self.fanout = struct.unpack_from(">256I", idx, layout.IDX_HEADER_SIZE)
        self.names_at = layout.IDX_HEADER_SIZE + layout.FANOUT_SIZE
        self.offsets_at = self.names_at + self.count * 24  # names (20 each), CRCs (4 each)
        self.large_at = self.offsets_at + self.count * 4

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:  # for bisect: the i-th name
        at = self.names_at + 20 * i
        return self.idx[at:at + 20]

    def position(self, oid: bytes) -> int:
        """The object's position in the .idx; BuildError if absent."""
        first = oid[0]
        lo = self.fanout[first - 1] if first else 0
        hi = self.fanout[first]
        i = bisect.bisect_left(self, oid, lo, hi)
        if i == hi or self[i] != oid:
            raise BuildError(f"object {oid.hex()} is not in the pack")
        return int(i)

    def offset(self, position: int) -> int:
        """The pack offset of the object at `position`."""
        value = struct.unpack_from(">I", self.idx, self.offsets_at + 4 * position)[0]
        if value & 0x80000000:
            value = struct.unpack_from(">Q", self.idx, self.large_at + 8 * (value & 0x7FFFFFFF))[0]
        return int(value)


class TreeReader:
    """A tree's rows (mode, name, id) in its order, read by one `git cat-file --batch`."""

    def __init__(self, repo: GitRepo) -> None:
        from .gitrun import git_command, git_env, start_git

        self.proc = start_git(git_command("cat-file", "--batch"), env=git_env(repo),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)

    def rows(self, tid: bytes) -> pix.TreeRows:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(tid.hex().encode() + b"\n")
        self.proc.stdin.flush()
        head = self.proc.stdout.readline().split()
        if len(head) != 3 or head[1] != b"tree" or not head[2].isdigit():
            raise BuildError(f"path index: tree {tid.hex()} cannot be read "
                             f"({b' '.join(head).decode('ascii', 'replace') or 'git stopped'})")
        size = int(head[2])
        data = self.proc.stdout.read(size + 1)
        if len(data) != size + 1:
            raise BuildError(f"path index: tree {tid.hex()} cannot be read (git stopped)")
        rows = []
        for mode, oid, name in parse_tree_raw(data[:size], f"tree {tid.hex()}"):
            if mode not in pix.MODES:
                raise BuildError(f"{name!r}: mode {mode:o} cannot be indexed")
            rows.append((mode, name, oid))
        return rows

    def close(self) -> None:
        from .. import children

        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        children.stop(self.proc)


def build_region(repo: GitRepo, commit: str, tree: str, pack_path: str, idx_path: str,
                 block_size: int, region_start: int) -> bytes:
    """The path index region of the image being written."""
    with open(idx_path, "rb") as f:
        table = IdxTable(f.read())
    with open(pack_path, "rb") as f:
        f.seek(-20, 2)
        pack_checksum = f.read(20)
        pack_size = f.tell()
    commit_id, tree_id = bytes.fromhex(commit), bytes.fromhex(tree)

    def offset_of(oid: bytes) -> int:
        return layout.PACK_OFFSET + table.offset(table.position(oid))

    reader = TreeReader(repo)
    try:
        return pix.encode(tree_id, reader.rows, table.position, offset_of,
                          commit=commit_id, pack_checksum=pack_checksum,
                          commit_offset=offset_of(commit_id), tree_offset=offset_of(tree_id),
                          pack_end=layout.PACK_OFFSET + pack_size - 20,
                          region_start=region_start, block_size=block_size)
    except ValueError as exc:
        raise BuildError(f"path index: {exc}") from None
    finally:
        reader.close()
