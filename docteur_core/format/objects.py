"""Git tree and commit objects, parsed with the standard library only.

The builder uses dulwich for these; the reader cannot (it runs in a
minimal guest), and it must also distrust what it reads: a tree entry
whose name could escape a directory, or a mode git never writes, makes
the image damaged rather than being interpreted.
"""

from __future__ import annotations

import sys

from ..errors import DamagedImage, LimitExceeded

MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_LINK = 0o120000
MODE_DIR = 0o040000
MODE_GITLINK = 0o160000
# 100664 is what very old git wrote for group-writable files.
_KNOWN_MODES = {MODE_FILE, MODE_EXEC, 0o100664, MODE_LINK, MODE_DIR, MODE_GITLINK}
_MODE_TEXTS = {b"%o" % m: m for m in _KNOWN_MODES}


def decode_name(raw: bytes) -> str:
    """Names are bytes in git; keep any byte sequence round-trippable."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class TreeEntry:
    """One entry of a tree, its name decoded (see `decode_name`)."""

    __slots__ = ("name", "mode", "id")

    def __init__(self, name: str, mode: int, id: bytes) -> None:
        self.name = name
        self.mode = mode
        self.id = id  # raw, 20 bytes

    @property
    def is_dir(self) -> bool:
        return self.mode == MODE_DIR

    @property
    def is_link(self) -> bool:
        return self.mode == MODE_LINK

    @property
    def is_file(self) -> bool:
        return self.mode & 0o170000 == 0o100000


# A tree entry as git writes it: one of the modes above in its canonical
# spelling, a name without NUL or "/", a raw id. A tree made only of these,
# with no "." or ".." and no name twice, needs no other check; anything else
# goes through `_parse_tree_checked` for the precise verdict.
#
# The pattern parses about twice as fast as the entry-by-entry parse, but
# importing `re` costs a start-up about 3 ms on a host (30-50 times that in
# an emulated guest): as much as the pattern saves on some 128 KiB of trees,
# far more than a light-mode lookup parses. So the pattern is compiled on
# first use, and `parse_tree` parses by hand until `re` is loaded anyway or
# it has parsed `_BY_HAND_BYTES` that way (then a fast-mode index of a large
# image is worth the import; a small one never pays it).
_BY_HAND_BYTES = 128 << 10
_parsed_by_hand = 0


class _CompiledOnFirstUse:
    """Stands for `_GIT_ENTRY` until the first match, then replaces itself."""

    def findall(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        global _GIT_ENTRY
        import re

        _GIT_ENTRY = re.compile(rb"(100644|100755|100664|120000|40000|160000) ([^\0/]+)\0(.{20})",
                                re.S)
        return _GIT_ENTRY.findall(data)


_GIT_ENTRY = _CompiledOnFirstUse()

RawTreeEntry = tuple[int, bytes, bytes]  # (mode, raw id, raw name)


# -- names git refuses to check out ------------------------------------------
#
# A tree entry named `.git` (or a spelling a file system folds into it) would
# let an image write a repository's control files: `extract` into DEST, then
# `git status` in DEST runs the image's `core.fsmonitor`. git refuses these
# names on checkout (read-cache.c `verify_path`, with core.protectNTFS, its
# default, and core.protectHFS); every reader here refuses them the same way,
# as damage, whatever the file system it runs on.

# Code points HFS+ ignores when it compares names (git's utf8.c
# `next_hfs_char`), as UTF-8.
_HFS_IGNORED = tuple(chr(c).encode("utf-8") for c in (
    *range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF))


def _ntfs_alias(piece: bytes, word: bytes, short: bytes) -> bool:
    """`piece` is `.word` or its 8.3 short name `short`, case folded, then
    only dots and spaces, up to its end or a `:` (an NTFS stream name)."""
    low = piece.lower()
    for head in (b"." + word, short):
        if low.startswith(head):
            rest = low[len(head):].partition(b":")[0]
            if not rest.strip(b". "):
                return True
    return False


def _hfs_alias(name: bytes, word: bytes) -> bool:
    """`name` is `.word` once the code points HFS+ ignores are dropped,
    case folded."""
    if b"\xe2" in name or b"\xef" in name:
        for ignored in _HFS_IGNORED:
            name = name.replace(ignored, b"")
    return name.lower() == b"." + word


def refused_name(name: bytes, mode: int) -> bool:
    """Whether git refuses to check out a tree entry named `name`: `.git` in
    any case, its NTFS aliases (`git~1`, `.git.`, `.git `, `.git::$DATA`)
    and HFS+ aliases (`.g\u200cit`), also after a backslash (a separator on
    NTFS); for a symbolic link, `.gitmodules` and its aliases too."""
    for piece in name.split(b"\\"):
        if _ntfs_alias(piece, b"git", b"git~1") or _hfs_alias(piece, b"git"):
            return True
        if mode == MODE_LINK and (_ntfs_alias(piece, b"gitmodules", b"gitmod~1")
                                  or _hfs_alias(piece, b"gitmodules")):
            return True
    return False


def may_be_refused(data: bytes) -> bool:
    """A cheap test that clears almost every tree: a name `refused_name`
    refuses holds `.g`/`.G`, `~1`, a backslash or a code point HFS+
    ignores (its UTF-8 starts with 0xE2 0x80/0x81 or 0xEF 0xBB). `data`
    holds the names only (joined by "/", which no name holds): a tree's
    raw ids would match by chance."""
    return (b".g" in data or b".G" in data or b"~1" in data or b"\\" in data
            or b"\xe2\x80" in data or b"\xe2\x81" in data or b"\xef\xbb" in data)


def _refused(name: bytes, where: str) -> DamagedImage:
    return DamagedImage(f"tree entry named {bytes(name)!r}, a name git refuses to check out "
                        "(it stands for .git)", where)


def _too_many(max_entries: int, where: str) -> LimitExceeded:
    return LimitExceeded(f"tree names more than {max_entries} entries", where, "max_paths")


# The shortest entry: a 5-digit mode ("40000", any other is 6), a space, a
# one-byte name, NUL, a 20-byte id. A tree of n bytes has at most n // 28
# entries: only a tree that could exceed a limit needs counting as it goes.
MIN_ENTRY = 28


def parse_tree_raw(data: bytes, where: str, max_entries: int | None = None
                   ) -> list[RawTreeEntry]:
    """Every entry of a tree as (mode, raw id, raw name), every guard applied.

    Whole-image verification parses every tree of the pack and keeps only
    these three fields, so it takes them as tuples; `parse_tree` builds
    `TreeEntry`s from them. Trees as git writes them are matched by one
    regular expression (C speed); the rest is parsed entry by entry and
    either accepted in the same form or rejected with a precise error.
    More than `max_entries` entries are refused (`LimitExceeded`) as they
    are counted, before they are all built.
    """
    # `findall` hands back plain tuples (no match object per entry); the
    # matches are disjoint, so they cover the tree without a gap exactly
    # when their lengths add up to the tree's.
    if max_entries is not None and len(data) // MIN_ENTRY > max_entries:
        # Could name more than allowed: counted as parsed, never all built.
        return _parse_tree_checked(data, where, max_entries)
    found = _GIT_ENTRY.findall(data)
    if found:
        mode_texts, names, ids = zip(*found)
        covered = sum(map(len, mode_texts)) + sum(map(len, names)) + 22 * len(found)
    else:
        mode_texts = names = ids = ()
        covered = 0
    if covered == len(data):
        if (len(set(names)) == len(names) and b"." not in names and b".." not in names
                and not may_be_refused(b"/".join(names))):
            return list(zip(map(_MODE_TEXTS.__getitem__, mode_texts), ids, names))
    return _parse_tree_checked(data, where, max_entries)


def _parse_tree_checked(data: bytes, where: str, max_entries: int | None = None
                        ) -> list[RawTreeEntry]:
    """The entry-by-entry parse: accepts any octal spelling of a known mode."""
    entries: list[RawTreeEntry] = []
    seen: set[bytes] = set()
    pos = 0
    n = len(data)
    if max_entries is not None and n // MIN_ENTRY <= max_entries:
        max_entries = None
    while pos < n:
        if max_entries is not None and len(entries) >= max_entries:
            raise _too_many(max_entries, where)
        sp = data.find(b" ", pos, pos + 8)
        if sp < 0:
            raise DamagedImage("tree entry without a mode", where)
        mode_text = data[pos:sp]
        mode = _MODE_TEXTS.get(mode_text)  # fast path: the spellings git writes
        if mode is None:
            if not mode_text or not all(48 <= c <= 55 for c in mode_text):
                raise DamagedImage(f"tree entry with a bad mode {bytes(mode_text)!r}", where)
            mode = int(mode_text, 8)
            if mode not in _KNOWN_MODES:
                raise DamagedImage(f"tree entry with unknown mode {mode:o}", where)
        nul = data.find(b"\0", sp + 1)
        if nul < 0 or nul + 21 > n:
            raise DamagedImage("truncated tree entry", where)
        name = data[sp + 1:nul]
        if not name or name in (b".", b"..") or b"/" in name:
            raise DamagedImage(f"tree entry with an illegal name {bytes(name)!r}", where)
        if name in seen:
            raise DamagedImage(f"tree lists {bytes(name)!r} twice", where)
        if refused_name(name, mode):
            raise _refused(name, where)
        seen.add(name)
        entries.append((mode, bytes(data[nul + 1:nul + 21]), bytes(name)))
        pos = nul + 21
    return entries


def parse_tree(data: bytes, where: str, max_entries: int | None = None) -> list[TreeEntry]:
    """The entries of a tree, for the path API (see `parse_tree_raw`).

    Both parsers give the same entries and the same verdicts; which one
    runs only decides when `re` gets imported (see `_BY_HAND_BYTES`).
    """
    global _parsed_by_hand
    if "re" in sys.modules or _parsed_by_hand > _BY_HAND_BYTES:
        parse = parse_tree_raw
    else:
        _parsed_by_hand += len(data)
        parse = _parse_tree_checked
    return [TreeEntry(decode_name(name), mode, oid)
            for mode, oid, name in parse(data, where, max_entries)]


def tree_order_problem(entries: list[RawTreeEntry]) -> str | None:
    """Why a tree's entries are not in git's order, or None if they are.

    git sorts a tree's entries by name as bytes, a subtree's name compared
    as if it ended with "/" (so "a.c" comes before the directory "a" and the
    directory "a" before "a0"); `git fsck` calls anything else treeNotSorted,
    and a reader searching a tree could miss a name in one.
    """
    import operator
    from itertools import islice

    keys = [name + b"/" if mode == MODE_DIR else name for mode, _, name in entries]
    if all(map(operator.lt, keys, islice(keys, 1, None))):
        return None
    for i in range(1, len(keys)):
        if not keys[i - 1] < keys[i]:
            return (f"entries are not in git's order ({bytes(entries[i - 1][2])!r} "
                    f"before {bytes(entries[i][2])!r})")
    return None


class Signature:
    """An author or committer line: `Name <email> epoch +hhmm`."""

    __slots__ = ("name", "email", "time", "tz_minutes", "raw")

    def __init__(self, name: str, email: str, time: int, tz_minutes: int, raw: str) -> None:
        self.name = name
        self.email = email
        self.time = time
        self.tz_minutes = tz_minutes
        self.raw = raw

    @property
    def identity(self) -> str:
        return f"{self.name} <{self.email}>"


def parse_signature(raw: str, where: str) -> Signature:
    lt = raw.find("<")
    gt = raw.find(">", lt + 1)
    if lt < 0 or gt < 0:
        raise DamagedImage(f"bad identity {raw!r} in commit", where)
    name = raw[:lt].strip()
    email = raw[lt + 1:gt]
    rest = raw[gt + 1:].split()
    time, tz = 0, 0
    if len(rest) == 2:
        try:
            time = int(rest[0])
            sign = -1 if rest[1].startswith("-") else 1
            digits = rest[1].lstrip("+-")
            tz = sign * (int(digits[:-2] or "0") * 60 + int(digits[-2:]))
        except ValueError:
            raise DamagedImage(f"bad date in identity {raw!r}", where) from None
    return Signature(name, email, time, tz, raw)


class Commit:
    """The fields of a commit object the reader uses."""

    __slots__ = ("tree", "parents", "author", "committer", "message")

    def __init__(self, tree: bytes, parents: tuple[bytes, ...], author: Signature,
                 committer: Signature, message: str) -> None:
        self.tree = tree  # raw id
        self.parents = parents  # raw ids
        self.author = author
        self.committer = committer
        self.message = message


def _hex_id(value: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise DamagedImage(f"bad object id {value!r} in commit", where)
    return raw


def parse_commit(data: bytes, where: str) -> Commit:
    text = data.decode("utf-8", "replace")
    head, sep, message = text.partition("\n\n")
    if not sep:
        head, message = text.rstrip("\n"), ""
    tree = None
    parents: list[bytes] = []
    author = committer = None
    for line in head.split("\n"):
        if line.startswith(" "):  # continuation of a multi-line header (gpgsig)
            continue
        key, _, value = line.partition(" ")
        if key == "tree" and tree is None:
            tree = _hex_id(value, where)
        elif key == "parent":
            parents.append(_hex_id(value, where))
        elif key == "author" and author is None:
            author = parse_signature(value, where)
        elif key == "committer" and committer is None:
            committer = parse_signature(value, where)
    if tree is None or author is None or committer is None:
        raise DamagedImage("commit lacks a tree, author or committer", where)
    return Commit(tree, tuple(parents), author, committer, message)
