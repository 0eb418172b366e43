"""Git as the oracle for images: helpers shared by the builder's tests.

`check_image` cuts the PACK region out of an image, has `git index-pack`
index it (its .idx must be byte-identical to the image's IDX region), runs
`git verify-pack`, then reads every object back with git. `source_listing`
and `image_listing` turn a directory and an image into comparable
{path: (mode, content)} maps. tests/oracles/test_git_oracle.py checks the
oracle itself on images git alone made, so that a builder bug cannot hide
behind an oracle bug.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from docteur_core.format import layout
from tests.helpers.support import git

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE = REPO_ROOT / "docteur_core" / "demo" / "site"


@dataclass
class Checked:
    commit: str
    tree: str
    objects: int
    git_dir: Path  # a bare repository holding exactly the image's pack
    pack: bytes


def pack_end(data: bytes, idx_offset: int, block_size: int) -> int:
    """Where the PACK ends: the padding is 1..block_size zero bytes before the IDX."""
    last = idx_offset - 1
    while last >= layout.PACK_OFFSET and data[last] == 0:
        last -= 1
    lowest = max(idx_offset - block_size, last + 1)
    for end in range(lowest, idx_offset):
        pack = data[layout.PACK_OFFSET:end]
        if len(pack) >= 32 and hashlib.sha1(pack[:-20]).digest() == pack[-20:]:
            return end
    raise AssertionError("no PACK with a valid trailer before the IDX region")


def idx_length(data: bytes, idx_offset: int) -> int:
    count = struct.unpack_from(">I", data, idx_offset + 8 + 255 * 4)[0]
    offsets_at = idx_offset + 8 + 1024 + count * 24
    large = sum(1 for i in range(count)
                if struct.unpack_from(">I", data, offsets_at + 4 * i)[0] & 0x80000000)
    return 8 + 1024 + count * 28 + large * 8 + 40


def without_path_index(data: bytes, block_size: int = 512) -> bytes:
    """The image up to its path index region (the OCaml layout), checking
    that the region starts where the IDX padding ends and fills whole blocks."""
    from docteur_core.format import pathindex as pix

    if not pix.has_magic(data[-pix.SUPER_SIZE:]):
        return data
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    assert (len(data) - sup.region_start) % block_size == 0
    assert data[sup.region_start:sup.nodes_start] == bytes(sup.nodes_start - sup.region_start)
    return data[:sup.region_start]


def check_image(image: Path, workdir: Path, block_size: int = 512) -> Checked:
    data = image.read_bytes()
    assert len(data) % block_size == 0, "image size is not a multiple of the block size"
    data = without_path_index(data, block_size)
    header = layout.parse_header(data, len(data))
    end = pack_end(data, header.idx_offset, block_size)
    assert header.idx_offset - end == layout.padding(end, block_size)
    pack = data[layout.PACK_OFFSET:end]
    assert pack[:8] == b"PACK\x00\x00\x00\x02"
    idx_len = idx_length(data, header.idx_offset)
    idx = data[header.idx_offset:header.idx_offset + idx_len]
    tail = data[header.idx_offset + idx_len:]
    assert tail == bytes(len(tail)) and len(tail) == layout.padding(header.idx_offset + idx_len,
                                                                    block_size)
    git_dir = workdir / "oracle.git"
    git("init", "-q", "--bare", str(git_dir))
    pack_file = git_dir / "objects" / "pack" / "pack-image.pack"
    pack_file.write_bytes(pack)
    git("index-pack", "-o", str(pack_file.with_suffix(".idx")), str(pack_file))
    assert pack_file.with_suffix(".idx").read_bytes() == idx, "IDX region differs from git's"
    git("verify-pack", str(pack_file.with_suffix(".idx")))
    env = {"GIT_DIR": str(git_dir)}
    listing = git("cat-file", "--batch-all-objects", "--batch-check", env=env).decode().split("\n")
    entries = [l.split() for l in listing if l]
    commits = [e[0] for e in entries if e[1] == "commit"]
    assert commits == [header.commit_hex], "the pack must hold exactly the header's commit"
    tree = git("rev-parse", f"{header.commit_hex}^{{tree}}", env=env).decode().strip()
    # Everything reachable is there, and nothing else.
    reachable = git("rev-list", "--objects", "--no-object-names", "--no-walk",
                    header.commit_hex, env=env).decode().split()
    assert sorted(reachable) == sorted(e[0] for e in entries)
    return Checked(header.commit_hex, tree, len(entries), git_dir, pack)


def image_listing(git_dir: Path, commit: str) -> dict[bytes, tuple[str, bytes]]:
    """{path: (mode, content)} for every blob; {path: ("040000", b"")} for every empty tree."""
    env = {"GIT_DIR": str(git_dir)}
    out = git("ls-tree", "-r", "-t", "-z", "--full-tree", commit, env=env)
    items = []
    for rec in out.split(b"\0"):
        if rec:
            meta, path = rec.split(b"\t", 1)
            mode, kind, sha = meta.split()
            items.append((path, mode.decode(), kind.decode(), sha.decode()))
    shas = [sha for _, _, kind, sha in items if kind == "blob"]
    batch = git("cat-file", "--batch", input="".join(s + "\n" for s in shas).encode(), env=env)
    contents = {}
    pos = 0
    for sha in shas:
        nl = batch.index(b"\n", pos)
        size = int(batch[pos:nl].split()[2])
        contents[sha] = batch[nl + 1:nl + 1 + size]
        pos = nl + 1 + size + 1
    listing = {}
    paths = {p for p, *_ in items}
    for path, mode, kind, sha in items:
        if kind == "blob":
            listing[path] = (mode, contents[sha])
        elif kind == "tree" and not any(p.startswith(path + b"/") for p in paths):
            listing[path] = ("040000", b"")
    return listing


def source_listing(root: Path) -> dict[bytes, tuple[str, bytes]]:
    """The same map for a directory, as docteur must store it."""
    root_b = os.fsencode(root)
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        rel_dir = os.path.relpath(dirpath, root_b)
        rel = b"" if rel_dir == b"." else rel_dir + b"/"
        kept = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                filenames.append(d)
            else:
                kept.append(d)
        dirnames[:] = kept
        if not filenames and not dirnames and rel:
            listing[rel[:-1]] = ("040000", b"")
        for f in filenames:
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                listing[rel + f] = ("120000", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
                listing[rel + f] = (mode, Path(os.fsdecode(full)).read_bytes())
    return listing


def git_write_tree(root: Path, scratch: Path) -> str:
    """The root tree id git itself computes for `root` (git add -A --force + write-tree)."""
    gitdir = scratch / "wt.git"
    git("init", "-q", "--bare", str(gitdir))
    env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root),
           "GIT_INDEX_FILE": str(scratch / "wt.index")}
    git("add", "-A", "--force", ".", cwd=root, env=env)
    return git("write-tree", cwd=root, env=env).decode().strip()
