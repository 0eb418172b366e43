"""What changed between two trees, as `git diff-tree -r` sees it: pure.

Both sides are given as a function `entries(handle) -> [(name, mode, id,
handle)]` (raw name bytes, octal mode as an int, raw object id, and whatever
the side needs to list that entry if it is a tree) and their root's
`(id, handle)`. The walk never lists a pair of subtrees whose ids are
equal, so two images that share most of their tree cost what differs, as in
git; the sides (an image, a directory hashed as `docteur make` would, a
repository) live in `command.py`.

git's rules, which `tests/diff/test_diff.py` checks against git itself:

- entries are merged in git's tree order (a tree's name sorts as if it
  ended with `/`), and a subtree's changes come where the subtree sorts, so
  the output is in `git diff-tree -r`'s order;
- a blob or link on one side and a tree on the other are two different
  entries: the one side's paths are all deleted (`D`), the other's added
  (`A`), each in its place in that order;
- same name, neither a tree: `T` when the kind differs (file, link,
  submodule: the mode's `S_IFMT` bits), else `M` when the id or the mode
  differs (100644 <-> 100755 is `M`).

The output texts (`name_status`, `stat_text`, `json_doc`) are pure too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ..errors import LimitExceeded
from ..format import objects as obj
from ..reader.vocabulary import kind_of

# (name, mode, raw id, handle) and the function listing a tree's entries.
Entry = tuple[bytes, int, bytes, Any]
Lister = Callable[[Any], list[Entry]]

_IFMT = 0o170000


class Change(NamedTuple):
    """One changed path. `old_*` are None for `A`, `new_*` for `D`;
    `old_handle`/`new_handle` let a side find the object again (sizes)."""

    status: str  # A, D, M, T
    path: bytes
    old_mode: int | None
    new_mode: int | None
    old_id: bytes | None
    new_id: bytes | None
    old_handle: Any = None
    new_handle: Any = None


def _is_tree(mode: int) -> bool:
    return mode == obj.MODE_DIR


def _key(entry: Entry) -> bytes:
    """git's base_name_compare: a tree sorts as if its name ended with '/'."""
    return entry[0] + b"/" if _is_tree(entry[1]) else entry[0]


def diff_trees(list_a: Lister, root_a: tuple[bytes, Any], list_b: Lister,
               root_b: tuple[bytes, Any], max_paths: int | None = None) -> Iterator[Change]:
    """Every changed blob, link and submodule path, in git's order.

    `max_paths` bounds the entries visited (a forged image whose tree
    contains itself would otherwise never end): more is `LimitExceeded`.
    """
    if root_a[0] == root_b[0]:
        return
    # Each frame: (prefix, a's entries, b's entries, position in a, in b).
    stack = [(b"", _sorted(list_a(root_a[1])), _sorted(list_b(root_b[1])), 0, 0)]
    seen = 0
    while stack:
        prefix, a, b, i, j = stack.pop()
        while i < len(a) or j < len(b):
            seen += 1
            if max_paths is not None and seen > max_paths:
                raise LimitExceeded(f"the trees name more than {max_paths} paths",
                                    f"path /{obj.decode_name(prefix)}", "max_paths")
            ka = _key(a[i]) if i < len(a) else None
            kb = _key(b[j]) if j < len(b) else None
            if kb is None or (ka is not None and ka < kb):
                name, mode, oid, handle = a[i]
                i += 1
                if _is_tree(mode):  # every path under it is deleted, here
                    stack.append((prefix, a, b, i, j))
                    stack.append((prefix + name + b"/", _sorted(list_a(handle)), [], 0, 0))
                    break
                yield Change("D", prefix + name, mode, None, oid, None, handle, None)
            elif ka is None or kb < ka:
                name, mode, oid, handle = b[j]
                j += 1
                if _is_tree(mode):
                    stack.append((prefix, a, b, i, j))
                    stack.append((prefix + name + b"/", [], _sorted(list_b(handle)), 0, 0))
                    break
                yield Change("A", prefix + name, None, mode, None, oid, None, handle)
            else:
                name, mode_a, id_a, handle_a = a[i]
                _, mode_b, id_b, handle_b = b[j]
                i += 1
                j += 1
                if _is_tree(mode_a):  # both trees: the same key
                    if id_a != id_b:
                        stack.append((prefix, a, b, i, j))
                        stack.append((prefix + name + b"/", _sorted(list_a(handle_a)),
                                      _sorted(list_b(handle_b)), 0, 0))
                        break
                    continue
                if (mode_a ^ mode_b) & _IFMT:
                    status = "T"
                elif id_a != id_b or mode_a != mode_b:
                    status = "M"
                else:
                    continue
                yield Change(status, prefix + name, mode_a, mode_b, id_a, id_b,
                             handle_a, handle_b)


def _sorted(entries: list[Entry]) -> list[Entry]:
    """In git's order. Trees git wrote already are; a directory's listing or
    a hand-made tree may not be, and the merge needs it."""
    return sorted(entries, key=_key)


# -- what is printed ------------------------------------------------------------

def name_status(changes: list[Change], quote: Callable[[str], bytes]) -> bytes:
    """`git diff-tree -r --name-status`'s lines: `S<TAB>PATH`, the path
    quoted by `quote` (git's rules, as `ls` prints names)."""
    return b"".join(c.status.encode() + b"\t" + quote(obj.decode_name(c.path)) + b"\n"
                    for c in changes)


def _size_text(size: int | None) -> str:
    return "-" if size is None else str(size)


def stat_text(changes: list[Change], sizes: list[tuple[int | None, int | None]],
              quote: Callable[[str], bytes]) -> bytes:
    """`--stat`: ` PATH | OLD -> NEW` a line (bytes; `-` where a side has no
    blob: added, deleted, or a submodule), the paths padded to one column
    as git's `--stat` does, then a summary line. git's `+++--` bar counts
    lines, meaningless for binaries and links: sizes say more here."""
    if not changes:
        return b""
    names = [quote(obj.decode_name(c.path)) for c in changes]
    width = max(len(n) for n in names)
    olds = [_size_text(s[0]) for s in sizes]
    news = [_size_text(s[1]) for s in sizes]
    ow = max(len(s) for s in olds)
    nw = max(len(s) for s in news)
    out = bytearray()
    for name, old, new in zip(names, olds, news):
        out += b" " + name.ljust(width) + b" | " + old.rjust(ow).encode() + b" -> " \
            + new.rjust(nw).encode() + b"\n"
    counts = {s: sum(1 for c in changes if c.status == s) for s in "ADMT"}
    before = sum(s[0] or 0 for s in sizes)
    after = sum(s[1] or 0 for s in sizes)
    words = {"A": "added", "D": "deleted", "M": "modified", "T": "type changed"}
    parts = [f"{counts[s]} {words[s]}" for s in "ADMT" if counts[s]]
    n = len(changes)
    out += (f" {n} path{'s' if n != 1 else ''} changed ({', '.join(parts)}), "
            f"{before} bytes -> {after} bytes\n").encode()
    return bytes(out)


def _json_text(raw: bytes) -> str:
    """A path as JSON carries it: bytes that are not UTF-8 become `\\xNN`."""
    return raw.decode("utf-8", "backslashreplace")


def json_doc(old: str, new: str, changes: list[Change],
             sizes: list[tuple[int | None, int | None]]) -> dict[str, Any]:
    """One document with stable field names (see docs/reading.md)."""
    out = []
    for c, (old_size, new_size) in zip(changes, sizes):
        e: dict[str, Any] = {
            "status": c.status, "path": _json_text(c.path),
            # The words of reader/vocabulary.py: kinds as `stat` says
            # them, modes as numbers, as the API gives them.
            "old_kind": None if c.old_mode is None else kind_of(c.old_mode),
            "new_kind": None if c.new_mode is None else kind_of(c.new_mode),
            "old_mode": c.old_mode, "new_mode": c.new_mode,
            "old_id": None if c.old_id is None else c.old_id.hex(),
            "new_id": None if c.new_id is None else c.new_id.hex(),
            "old_size": old_size, "new_size": new_size,
        }
        try:
            c.path.decode("utf-8")
        except UnicodeDecodeError:
            e["path_hex"] = c.path.hex()  # the exact bytes, as `ls --json` gives them
        out.append(e)
    def arg(text: str) -> str:  # an argument that is not UTF-8 (surrogates) as `\xNN`
        return _json_text(text.encode("utf-8", "surrogateescape"))

    return {"old": arg(old), "new": arg(new), "equal": not changes, "changes": out}
