"""Which entries of a directory source are left out: `--exclude` and `--gitignore`.

The answer must be git's: `docteur make --gitignore DIR` stores the tree
`git add -A` (without `--force`) + `git write-tree` would. Pattern matching
is dulwich's (`dulwich.ignore.Pattern`, wildmatch as git's); this module
only puts the patterns together the way git's dir.c does, since the walk is
ours (the snapshot's two-pass scan), not dulwich's:

- `.gitignore` files are read as git reads them: a UTF-8 BOM skipped, lines
  split at LF with one CR before it dropped, `#` comments and empty lines
  skipped, trailing spaces trimmed unless escaped (`trim_trailing_spaces`).
  A `.gitignore` that is a symbolic link is not read (git >= 2.32 refuses
  to follow it; it is still stored, as a link), and neither is one that is
  not a regular file;
- a folder's `.gitignore` applies below that folder, its patterns matched
  against paths relative to it; deeper files take precedence over shallower
  ones, and within a file the last matching pattern decides (so `!` can
  re-include what an earlier line excluded);
- `--exclude` patterns rank as `.git/info/exclude` and `core.excludesFile`
  do: below every `.gitignore`, matched from SOURCE's top. The user's own
  `core.excludesFile` and `$XDG_CONFIG_HOME/git/ignore` are never read: the
  image must not depend on who runs the build;
- an excluded folder is not entered at all, so nothing below it (not even a
  `!` pattern in its own `.gitignore`) can bring anything back — git's rule
  ("it is not possible to re-include a file if a parent directory of that
  file is excluded"). The walk does this by not descending;
- whether an entry is a folder is its `lstat`: a symbolic link to a folder
  is not one (a `dir/` pattern does not match it), as in git's index.

Pure: bytes in, decisions out; the snapshot does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from dulwich.ignore import Pattern
from dulwich.wildmatch import MalformedPattern

from ..errors import BuildError

GITIGNORE = b".gitignore"

_BOM = b"\xef\xbb\xbf"


def gitignore_lines(data: bytes) -> list[bytes]:
    """The pattern lines of a `.gitignore` file's bytes, as git's
    `add_patterns_from_buffer` cuts them (comments and blank lines dropped)."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    lines = []
    for line in data.split(b"\n"):
        line = line.split(b"\0", 1)[0]  # git reads each line as a C string
        if not line or line.startswith(b"#"):
            continue
        if line.endswith(b"\r"):
            line = line[:-1]
        line = _trim_trailing_spaces(line)
        if line:
            lines.append(line)
    return lines


def _trim_trailing_spaces(line: bytes) -> bytes:
    """git's `trim_trailing_spaces`: unescaped trailing spaces go; `\\ ` stays as written."""
    last_space = None
    i = 0
    while i < len(line):
        c = line[i]
        if c == 0x20:
            if last_space is None:
                last_space = i
        elif c == 0x5C:  # a backslash escapes the next byte
            i += 1
            if i >= len(line):
                return line
            last_space = None
        else:
            last_space = None
        i += 1
    return line if last_space is None else line[:last_space]


def compile_patterns(lines: Iterable[bytes]) -> tuple[list[Pattern], list[bytes]]:
    """(the patterns, the lines wildmatch refuses). A refused line matches
    nothing in git (wildmatch aborts on it), so it is left out here too."""
    patterns, malformed = [], []
    for line in lines:
        try:
            patterns.append(Pattern(line))
        except MalformedPattern:
            malformed.append(line)
    return patterns, malformed


def exclude_patterns(texts: Sequence[str | bytes]) -> list[Pattern]:
    """`--exclude` patterns; a malformed one is an error (it could never match)."""
    lines = [t if isinstance(t, bytes) else t.encode("utf-8", "surrogateescape") for t in texts]
    patterns, malformed = compile_patterns(lines)
    if malformed:
        shown = malformed[0].decode("utf-8", "backslashreplace")
        raise BuildError(f"--exclude {shown!r}: not a valid gitignore pattern "
                         "(an unclosed '[' matches nothing)")
    return patterns


@dataclass(frozen=True)
class _Layer:
    base: bytes  # the folder whose patterns these are, relative to SOURCE ("" for the top)
    patterns: tuple[Pattern, ...]


@dataclass(frozen=True)
class Rules:
    """The patterns in force in one folder of SOURCE.

    `layers` run from the lowest precedence (the `--exclude` patterns) to
    the highest (the deepest folder's `.gitignore`).
    """

    layers: tuple[_Layer, ...] = ()
    gitignore: bool = False  # whether folders' .gitignore files count

    @classmethod
    def make(cls, excludes: Sequence[Pattern] = (), gitignore: bool = False) -> "Rules":
        layers = (_Layer(b"", tuple(excludes)),) if excludes else ()
        return cls(layers, gitignore)

    @property
    def active(self) -> bool:
        """Whether anything can be left out at all (the walk skips the work when not)."""
        return bool(self.layers) or self.gitignore

    def enter(self, folder: bytes, patterns: Sequence[Pattern]) -> "Rules":
        """The rules inside `folder` (relative to SOURCE, b"" for the top), whose
        `.gitignore` holds `patterns`."""
        if not patterns:
            return self
        return Rules(self.layers + (_Layer(folder, tuple(patterns)),), self.gitignore)

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """Whether the entry at `path` (relative to SOURCE, in a folder that is
        itself not excluded) is left out: the last pattern matching it, in the
        deepest file that has one, decides."""
        for layer in reversed(self.layers):
            if layer.base:
                rel = path[len(layer.base) + 1:]
            else:
                rel = path
            for pattern in reversed(layer.patterns):
                if pattern.matches(rel, is_dir):
                    return pattern.is_exclude
        return False
