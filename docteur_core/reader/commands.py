"""`docteur ls|cat|stat|tree|info IMAGE ...`: read an image from the shell.

The verbs themselves (`VERBS`, `run_verb`) write bytes to a binary stream
and are shared with the guest entry point (`guest.py`), which cannot afford
argparse-heavy start-up; this module imports nothing beyond the reader at
load time, and `argparse` only reaches it as the parser `cli.py` passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from ..format import objects as obj
from .vocabulary import mode_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # for annotations only: `typing` costs a guest's start-up (see __init__)
    from typing import Any, BinaryIO

    from .image import Image, Node

_TYPES = {obj.MODE_DIR: "tree", obj.MODE_GITLINK: "commit", obj.MODE_LINK: "blob"}


# C escapes git uses when it quotes a path (quote.c's sq_lookup).
_ESCAPES = {0x07: b"\\a", 0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0B: b"\\v",
            0x0C: b"\\f", 0x0D: b"\\r", 0x22: b'\\"', 0x5C: b"\\\\"}


def _name(name: str) -> bytes:
    """A name that stays on one line: as `git ls-tree` shows it with
    core.quotePath=false (quoted, C escapes, when it holds a control
    character, `"` or `\\`; every other byte, UTF-8 included, as it is)."""
    raw = obj.encode_name(name)
    if not any(c < 0x20 or c == 0x7F or c == 0x22 or c == 0x5C for c in raw):
        return raw
    out = bytearray(b'"')
    for c in raw:
        if c in _ESCAPES:
            out += _ESCAPES[c]
        elif c < 0x20 or c == 0x7F:
            out += b"\\%03o" % c
        else:
            out.append(c)
    out += b'"'
    return bytes(out)


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _json_text(s: str) -> str:
    """A name as JSON can carry it: bytes that are not UTF-8 (kept as
    surrogates by `decode_name`) become `\\xNN`, as `verify --json` does."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _json_out(doc: dict[str, Any], out: BinaryIO) -> None:
    import json  # host-side only: a guest's plain verbs never pay for it

    out.write(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")


def _blob_size(image: Image, node: Node) -> int:
    if image.store.verify:  # only the content proves the size
        return image.size(node.path)
    return image.store.object_size(node.raw_id, node.offset)


def _entry_json(image: Image, node: Node, rel: str, sized: bool) -> dict[str, Any]:
    # The words of vocabulary.py: `kind` as stat's, `mode` an int as the
    # API's; `type` is git's object type, as `git ls-tree` prints it.
    e: dict[str, Any] = {"path": _json_text(rel), "name": _json_text(node.name),
                         "kind": node.kind, "mode": node.mode,
                         "type": _TYPES.get(node.mode, "blob"), "id": node.id}
    raw = obj.encode_name(rel)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        e["path_hex"] = raw.hex()  # the exact bytes, for a name that is not UTF-8
    if sized:
        e["size"] = (None if node.mode in (obj.MODE_DIR, obj.MODE_GITLINK)
                     else _blob_size(image, node))
    return e


def _recursive(image: Image, path: str) -> Iterator[tuple[Node, str]]:
    """(node, path relative to `path`) of every file, link and submodule under
    `path`, in `git ls-tree -r`'s order (a directory's entries in place of
    it), bounded as a walk is (`max_paths`, `max_path_bytes`)."""
    top = image.entries(path)  # raises NotADirectory for a file
    image.count_paths(path)  # 2^60 paths are refused before the first line
    cut = len(image.stat(path).path.strip("/"))
    cut = cut + 1 if cut else 0
    seen = path_bytes = 0
    stack = [(top, 0)]
    while stack:
        entries, i = stack.pop()
        if i >= len(entries):
            continue
        node = entries[i]
        stack.append((entries, i + 1))
        seen += 1
        path_bytes += len(node.path)
        if seen > image.max_paths or path_bytes > image.max_path_bytes:
            from ..errors import LimitExceeded

            raise LimitExceeded(f"the trees name more than {image.max_paths} paths or "
                                f"{image.max_path_bytes} bytes of paths", f"path /{node.path}",
                                "max_paths")
        if node.mode == obj.MODE_DIR:
            stack.append((image.entries(node), 0))  # the node: no lookup from the root
        else:
            yield node, node.path[cut:]


def verb_ls(image: Image, args: list[str], out: BinaryIO,
            flags: frozenset[str] = frozenset()) -> int:
    """ls [-r] [-l] [--json] [PATH]: one entry a line, `MODE TYPE ID<TAB>NAME`
    (directories end with /); `-r` lists every file under PATH with its path
    (as `git ls-tree -r`), `-l` adds the size column (as `git ls-tree -l`)."""
    path = args[0] if args else ""
    sized = "-l" in flags
    if "-r" in flags:
        listing = _recursive(image, path)
    else:
        listing = ((node, node.name) for node in image.entries(path))
    if "--json" in flags:
        entries = [_entry_json(image, node, rel, sized) for node, rel in listing]
        _json_out({"path": _json_text(image.stat(path).path), "recursive": "-r" in flags,
                   "entries": entries}, out)
        return 0
    for node, rel in listing:
        suffix = b"/" if node.mode == obj.MODE_DIR else b""
        size = b""
        if sized:  # git's `%7s` column: `-` for a tree or a submodule
            size = b" %7s" % (b"-" if node.mode in (obj.MODE_DIR, obj.MODE_GITLINK)
                              else b"%d" % _blob_size(image, node))
        out.write(b"%06o %s %s%s\t%s%s\n" % (node.mode, _TYPES.get(node.mode, "blob").encode(),
                                             node.id.encode(), size, _name(rel), suffix))
    return 0


def verb_cat(image: Image, args: list[str], out: BinaryIO) -> int:
    """cat PATH: the file's bytes, exactly (a large file as it inflates)."""
    image.stream(args[0], out.write)
    return 0


def verb_stat(image: Image, args: list[str], out: BinaryIO,
              flags: frozenset[str] = frozenset()) -> int:
    """stat [--json] PATH: kind, mode, size and object id, one `key: value` a line."""
    st = image.stat(args[0])
    lines = [("path", st.path), ("kind", st.kind),
             ("mode", mode_text(st.mode)), ("size", str(st.size)), ("id", st.id)]
    if st.is_link:
        lines.append(("target", image.readlink(args[0])))
    if "--json" in flags:
        doc: dict[str, Any] = {key: _json_text(value) for key, value in lines}
        doc["mode"], doc["size"] = st.mode, st.size  # numbers, as in the API
        _json_out(doc, out)
        return 0
    for key, value in lines:
        out.write(_text(f"{key}: {value}\n"))
    return 0


def verb_tree(image: Image, args: list[str], out: BinaryIO) -> int:
    """tree [PATH]: the hierarchy under PATH, drawn with ASCII."""
    path = args[0] if args else ""
    top = image.entries(path)  # raises NotADirectory for a file
    image.count_paths(path)  # 2^60 paths are refused before the first line
    out.write(_text("/" + "/".join(p for p in path.split("/") if p)) + b"\n")
    dirs = files = 0
    # Bounded as a walk is (`max_paths`, `max_path_bytes`): a small image
    # can name 2^60 paths, which would take forever to draw.
    path_bytes = 0
    stack = [(top, 0, b"")]
    while stack:
        entries, i, prefix = stack.pop()
        if i >= len(entries):
            continue
        node = entries[i]
        last = i == len(entries) - 1
        stack.append((entries, i + 1, prefix))
        path_bytes += len(node.path)
        if dirs + files >= image.max_paths or path_bytes > image.max_path_bytes:
            from ..errors import LimitExceeded

            raise LimitExceeded(f"the trees name more than {image.max_paths} paths or "
                                f"{image.max_path_bytes} bytes of paths", f"path /{node.path}",
                                "max_paths")
        line = prefix + (b"`-- " if last else b"|-- ") + _name(node.name)
        if node.mode == obj.MODE_DIR:
            dirs += 1
            out.write(line + b"/\n")
            stack.append((image.entries(node), 0, prefix + (b"    " if last else b"|   ")))
        elif node.mode == obj.MODE_LINK:
            files += 1
            out.write(line + b" -> " + _text(image.readlink(node.path)) + b"\n")
        else:
            files += 1
            out.write(line + b"\n")
    plural = ("y" if dirs == 1 else "ies", "" if files == 1 else "s")
    out.write(_text(f"\n{dirs} director{plural[0]}, {files} file{plural[1]}\n"))
    return 0


# `info` shows this much of a commit message at most.
MAX_SHOWN_MESSAGE = 64 << 10


def _path_index_line(image: Image) -> str:
    index = image.path_index
    if index is not None:
        sup = index.sup
        use = "" if not image.store.verify else " (places objects; the trees are hashed)"
        size = image.store.capacity - sup.region_start
        return (f"yes, {sup.paths} paths, {sup.records} trees in {sup.pages} pages, "
                f"{size} bytes at offset {sup.region_start}{use}")
    from ..format.pathindex import version_of
    from .pathindex import probe

    data = probe(image.store.pread, image.store.capacity)
    if data is not None:
        if version_of(data) == 1:
            return "yes, version 1, not used (the trees are walked; rebuild the image)"
        return "yes, not used"
    return "no"


def _path_index_json(image: Image) -> dict[str, Any] | None:
    index = image.path_index
    if index is not None:
        sup = index.sup
        return {"used": True, "version": sup.version, "paths": sup.paths,
                "trees": sup.records, "pages": sup.pages,
                "bytes": image.store.capacity - sup.region_start,
                "region_offset": sup.region_start}
    from ..format.pathindex import version_of
    from .pathindex import probe

    data = probe(image.store.pread, image.store.capacity)
    if data is not None:
        return {"used": False, "version": version_of(data)}
    return None


def verb_info(image: Image, args: list[str], out: BinaryIO,
              flags: frozenset[str] = frozenset()) -> int:
    """info: the image's commit and layout."""
    from .image import zone_in_range

    c = image.commit_info(0)
    message, whole = image.commit_message(MAX_SHOWN_MESSAGE)
    store = image.store
    date = c.date.isoformat()
    committer = image._commit.committer
    if not zone_in_range(committer):
        date += f" (in UTC: the commit's zone {committer.raw.split()[-1][:40]} is out of range)"
    lines = [
        ("commit", c.id), ("tree", c.tree),
        ("author", c.author), ("committer", c.committer),
        ("date", date),
        ("objects", str(store.object_count)),
        ("idx offset", str(store.header.idx_offset)),
        ("capacity", str(store.capacity)),
        ("mode", image.mode),
        ("path index", _path_index_line(image)),
    ]
    if "--json" in flags:
        _json_out({
            "commit": c.id, "tree": c.tree, "parents": list(c.parents),
            "author": _json_text(c.author), "committer": _json_text(c.committer),
            "date": c.date.isoformat(), "author_date": c.author_date.isoformat(),
            "objects": store.object_count, "idx_offset": store.header.idx_offset,
            "capacity": store.capacity, "mode": image.mode,
            "path_index": _path_index_json(image),
            "message": _json_text(message), "message_complete": whole,
        }, out)
        return 0
    for key, value in lines:
        out.write(_text(f"{key}: {value}\n"))
    out.write(b"message:\n")
    for line in message.rstrip("\n").split("\n"):
        out.write(_text(f"    {line}\n"))
    if not whole:
        out.write(_text(f"    [... cut after {MAX_SHOWN_MESSAGE} characters: the commit object "
                        f"is {image.commit_size} bytes]\n"))
    return 0


# verb -> (function, minimum args, maximum args, usage)
VERBS: dict[str, tuple[Callable[..., int], int, int, str]] = {
    "ls": (verb_ls, 0, 1, "[PATH]"),
    "cat": (verb_cat, 1, 1, "PATH"),
    "stat": (verb_stat, 1, 1, "PATH"),
    "tree": (verb_tree, 0, 1, "[PATH]"),
    "info": (verb_info, 0, 0, ""),
}


# verb -> the flags it takes (the guest parses them by hand too)
FLAGS: dict[str, frozenset[str]] = {
    "ls": frozenset({"-r", "-l", "--json"}),
    "stat": frozenset({"--json"}),
    "info": frozenset({"--json"}),
}


def run_verb(image: Image, verb: str, args: list[str], out: BinaryIO,
             flags: Collection[str] = frozenset()) -> int:
    fn, _, _, _ = VERBS[verb]
    try:
        if flags:
            return fn(image, args, out, frozenset(flags))
        return fn(image, args, out)
    finally:
        out.flush()
