"""The commit the header names, and everything its tree reaches.

The commit must be in the pack and be a commit; its tree is walked (each
tree once, iteratively, with a guard against trees containing themselves)
and everything reached must be present with the type its referrer gives
it (gitlinks excepted: submodules are not in an image by design). The walk
also counts files, links and bytes, and objects nothing reaches are
warnings.

`check_commit` is the step: it returns the commit as read (`CommitHead`),
which the path index check and the signature check read again.
"""

from __future__ import annotations

from ..format import idx as idxmod
from ..format.inflate import EntryInflater, EntryStream
from ..format.trail import Trail
from ..format import layout, limits, objects, pack
from ..errors import DamagedImage
from ..reader.store import Store
from .layoutcheck import Pread
from .locate import Located
from .report import R_HEADER, R_OBJ_DATA, R_OBJECTS, Report
from ..reader.commands import MAX_SHOWN_MESSAGE
from .state import COMMIT_HEAD, CommitHead, Objects, at_offset, hex_id
from .stream import READ_CHUNK


def _shown(message: str, whole: bool) -> tuple[str, bool]:
    """(what the report shows of a commit message, whether that is all of
    it): the first MAX_SHOWN_MESSAGE characters, as `docteur info` shows."""
    if whole and len(message) <= MAX_SHOWN_MESSAGE:
        return message, True
    return message[:MAX_SHOWN_MESSAGE], False


def check_commit(pread: Pread, capacity: int, located: Located, objects_: Objects | None,
                 scanned: CommitHead | None, report: Report, max_paths: int) -> CommitHead | None:
    """The header's commit (from the scan's `objects_` and `scanned`, or,
    quick: None, looked up through the IDX), then its tree walked; returns
    the commit as read (None when it could not be)."""
    report.check("commit")
    cid = located.commit_id
    if objects_ is None:
        head = _load_commit_quick(pread, capacity, located, report)
    else:
        head = scanned
        pos = objects_.by_id.get(cid)
        if pos is None:
            if (objects_.damaged or not objects_.complete) and _idx_lists(located, cid):
                return head  # it is in the pack, among the damage already reported
            report.problem(R_HEADER, at_offset(0), f"commit {hex_id(cid)} named by the header is "
                           "not in the pack")
            return head
        if objects_.otype.get(pos) != pack.OBJ_COMMIT:
            report.problem(R_HEADER, at_offset(0), f"object {hex_id(cid)} named by the header "
                           f"is a {pack.TYPE_NAMES[objects_.otype[pos]]}, not a commit")
            return head
    if head is None:
        return None
    data, size = head.data, head.size
    if size > limits.MAX_COMMIT_HEADER and b"\n\n" not in data[:limits.MAX_COMMIT_HEADER]:
        # What the readers refuse at open (they read no more than that).
        report.problem(R_OBJECTS, f"commit {hex_id(cid)}", "its header lines are longer than "
                       f"{limits.MAX_COMMIT_HEADER} bytes")
        return head
    try:
        commit = objects.parse_commit(data, f"commit {hex_id(cid)}")
    except DamagedImage as exc:
        report.problem(R_OBJECTS, f"commit {hex_id(cid)}", exc.what)
        return head
    r = report
    r.tree = hex_id(commit.tree)
    r.author = commit.author
    r.committer = commit.committer
    r.commit_size = size
    r.message, r.message_complete = _shown(commit.message, len(data) == size)
    for role, who in (("author", commit.author), ("committer", commit.committer)):
        if not who.email:  # the OCaml docteur's identity parser wants 1+ bytes there
            report.warning(R_OBJECTS, f"commit {hex_id(cid)}",
                           f"its {role}'s email is empty: the OCaml docteur cannot read this "
                           "commit (\"Malformed Git commit object\")")
    if objects_ is None or not objects_.complete:
        return head  # what the tree reaches cannot be judged on a pack read in part
    _Walk(located, objects_, report, max_paths).run(cid, commit)
    return head


def _idx_lists(located: Located, oid: bytes) -> bool:
    data, idx = located.idx_bytes, located.idx
    if idx is None or data is None:
        return True  # cannot tell: do not accuse the header
    base = located.idx_offset
    assert base is not None  # set with the IDX
    pread = lambda off, n: data[off - base:off - base + n]
    try:
        return idxmod.find(pread, idx, oid) is not None
    except DamagedImage:
        return True


def _load_commit_quick(pread: Pread, capacity: int, located: Located,
                       report: Report) -> CommitHead | None:
    """Quick mode has no scan: look the commit up through the IDX."""
    idx, idx_bytes, cid = located.idx, located.idx_bytes, located.commit_id
    if idx is None or idx_bytes is None:
        return None
    base = idx.base
    idx_pread = lambda off, n: idx_bytes[off - base:off - base + n]
    try:
        rel = idxmod.lookup(idx_pread, idx, cid)
    except DamagedImage:
        return None
    if rel is None:
        report.problem(R_HEADER, at_offset(0), f"commit {hex_id(cid)} named by the "
                       "header is not in the IDX")
        return None
    pos = rel + layout.PACK_OFFSET
    limit = located.trailer_at or idx.base
    try:
        eh = pack.parse_entry_header(pread(pos, pack.MAX_ENTRY_HEADER), at_offset(pos))
        kind = pack.TYPE_NAMES.get(eh.type)
        data: bytes | None = None
        size = eh.size
        if kind is None:
            # git may store the commit as a delta: the reader's store
            # follows the chain (and checks CRCs and the SHA-1).
            kind, data, size = Store(pread, capacity, verify=True
                                     ).read_head(cid, None, COMMIT_HEAD)
        if kind != "commit":
            report.problem(R_HEADER, at_offset(0), f"object {hex_id(cid)} named by "
                           f"the header is a {kind}, not a commit")
            return None
        if data is None and size > COMMIT_HEAD:
            data = _inflate_head(pread, pos + eh.header_len, limit, size, COMMIT_HEAD,
                                 at_offset(pos))
        elif data is None:
            data, _ = pack.inflate_from(pread, pos + eh.header_len, eh.size, limit,
                                        at_offset(pos))
    except DamagedImage as exc:
        report.problem(R_OBJ_DATA, at_offset(pos), exc.what)
        return None
    return CommitHead(data, size)


def _inflate_head(pread: Pread, at: int, end: int, size: int, keep: int, where: str) -> bytes:
    """The first `keep` bytes of the zlib stream at `at` (not past `end`),
    which declares `size` bytes.

    Quick mode does no per-object work: of a commit larger than what
    the report shows it inflates that much, never a message of
    hundreds of megabytes. The shared inflater's reads stop there; its
    rules hold for what is read (a stream ending sooner must still have
    inflated to exactly `size` bytes).
    """
    stream = EntryStream(EntryInflater(size, where), pread, at, end, READ_CHUNK)
    parts = []
    have = 0
    while have < keep:
        piece = stream.next_chunk(keep - have)
        if not piece:
            break
        parts.append(piece)
        have += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Walk:
    """The commit's tree walked once (`run`): what it reaches, counted."""

    def __init__(self, located: Located, objects_: Objects, report: Report,
                 max_paths: int) -> None:
        self.located, self.objects, self.report = located, objects_, report
        self.max_paths = max_paths
        self.by_id, self.otype, self.damaged = objects_.by_id, objects_.otype, objects_.damaged

    def problem(self, region: str, where: str, what: str) -> None:
        self.report.problem(region, where, what)

    def run(self, cid: bytes, commit: objects.Commit) -> None:
        self.report.check("reachability")
        reached = {cid}
        for parent in commit.parents:
            if parent in self.by_id:
                reached.add(parent)  # a snapshot has none; history is tolerated
        counts = self.report.counts
        root = commit.tree
        if root not in self.by_id:
            self.problem(R_OBJECTS, f"object {hex_id(root)}",
                         "the commit's root tree is not in the pack")
            return
        if self.otype[self.by_id[root]] != pack.OBJ_TREE:
            self.problem(R_OBJECTS, f"object {hex_id(root)}", "the commit's root is not a tree")
            return
        # Per tree: (files, links, gitlinks, directories, bytes, executables:
        # the files that are 100755), computed once.
        memo: dict[bytes, tuple[int, int, int, int, int, int]] = {}
        visiting: set[bytes] = set()
        trail = Trail()  # a directory's path is spelled only for a problem
        stack: list[tuple[bytes, int, int]] = [(root, 0, 0)]
        # Parsed entries of the directories being walked only (state 0 to 1).
        open_trees: dict[bytes, list[tuple[int, bytes, bytes]] | tuple[()]] = {}
        max_paths = self.max_paths

        def entries_of(tid: bytes) -> list[objects.RawTreeEntry] | None:
            return self.objects.tree_entries(tid, max_paths)
        # Type of an object by id (None if absent): `_typed`, inlined, as
        # the walk asks it of every entry of every tree.
        by_id, otype = self.by_id, self.otype

        def typed(oid: bytes) -> int | None:
            return otype.get(by_id.get(oid, -1))
        blob_sizes = self.objects.blob_sizes
        while stack:
            tid, at, state = stack.pop()
            if state == 0:
                if tid in memo:
                    continue
                if tid in visiting:
                    self.problem(R_OBJECTS, f"tree {hex_id(tid)}", "tree contains itself")
                    memo[tid] = (0, 0, 0, 0, 0, 0)
                    continue
                visiting.add(tid)
                reached.add(tid)
                stack.append((tid, at, 1))
                entries = open_trees[tid] = entries_of(tid) or ()
                for mode, oid, name in entries:
                    if mode == objects.MODE_DIR:
                        t = typed(oid)
                        if t == pack.OBJ_TREE:
                            if oid not in memo:
                                stack.append((oid, trail.child(at, objects.decode_name(name)), 0))
                        else:
                            self._missing(oid, _inside(trail, at, name) + "/", "tree", t)
                continue
            visiting.discard(tid)
            entries = open_trees.pop(tid, ())
            if entries:
                # A directory of files only (the bulk), in C-speed passes:
                # every size found means every blob is in the pack.
                modes, oids, _ = zip(*entries)
                if objects.MODE_DIR not in modes and objects.MODE_GITLINK not in modes:
                    sizes = list(map(blob_sizes.get, oids))
                    if None not in sizes:
                        reached.update(oids)
                        ln = modes.count(objects.MODE_LINK)
                        # (no None among them, just checked: mypy cannot narrow a list)
                        memo[tid] = (len(oids) - ln, ln, 0, 0, sum(sizes),  # type: ignore[arg-type]
                                     modes.count(objects.MODE_EXEC))
                        continue
            f = ln = g = d = nbytes = ex = 0
            for mode, oid, name in entries:
                if mode == objects.MODE_DIR:
                    sub = memo.get(oid)
                    d += 1
                    if sub is not None:
                        f += sub[0]; ln += sub[1]; g += sub[2]; d += sub[3]; nbytes += sub[4]
                        ex += sub[5]
                elif mode == objects.MODE_GITLINK:
                    g += 1
                else:
                    size = blob_sizes.get(oid)  # there exactly for the blobs of the pack
                    if size is None:
                        self._missing(oid, _inside(trail, at, name), "blob",
                                      typed(oid))
                        continue
                    reached.add(oid)
                    if mode == objects.MODE_LINK:
                        ln += 1
                    else:
                        f += 1
                        ex += mode == objects.MODE_EXEC
                    nbytes += size
            memo[tid] = (f, ln, g, d, nbytes, ex)
        total = memo.get(root, (0, 0, 0, 0, 0, 0))
        (counts.files, counts.links, counts.gitlinks, counts.directories, counts.bytes,
         counts.executables) = total
        # Each tree was walked once, but the paths are counted in full: an
        # image naming more than the readers will walk is refused here too.
        paths = sum(total[:4])
        if paths > self.max_paths:
            self.problem(R_OBJECTS, f"tree {hex_id(root)}",
                         f"the trees name {paths} paths, more than the limit of "
                         f"{self.max_paths} (max_paths)")
        if not self.report.problems:  # otherwise they are mere consequences
            self._warn_unreachable(reached)

    def _missing(self, oid: bytes, path: str, want: str, got: int | None) -> None:
        if got is None and self.damaged and _idx_lists(self.located, oid):
            return  # its entry is in the pack, damaged, and already reported
        if got is None:
            self.problem(R_OBJECTS, f"object {hex_id(oid)}",
                         f"{path or '/'} is not in the pack")
        else:
            self.problem(R_OBJECTS, f"object {hex_id(oid)}",
                         f"{path} should be a {want}, the pack has a {pack.TYPE_NAMES[got]}")

    def _warn_unreachable(self, reached: set[bytes]) -> None:
        self.report.check("unreachable")
        for oid, pos in self.by_id.items():
            if oid not in reached:
                self.report.warning(R_OBJECTS, f"object {hex_id(oid)}",
                             f"{pack.TYPE_NAMES[self.otype[pos]]} at offset {pos} is not "
                             "reachable from the commit")



def _inside(trail: Trail, at: int, name: bytes) -> str:
    """The path of entry `name` of the directory at `at`, as problems spell it."""
    folder = trail.path(at)
    return f"{folder}/{objects.decode_name(name)}" if folder else objects.decode_name(name)
