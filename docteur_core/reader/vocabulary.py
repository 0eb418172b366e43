"""The words docteur uses for what it reads, the same in the API, the CLI and JSON.

One word per thing, defined here and nowhere else (docs/vocabulary.md says
it for users):

- a path's *kind*: `file`, `executable`, `symlink`, `directory` or
  `submodule`, from its git mode (`kind_of`). `Node.kind`, `Stat.kind`,
  `Image.exists`, `Image.list`, `docteur stat` and every `kind` field of the
  JSON documents say these words. Mirage_kv.RO's two words (`value` for
  anything that is not a directory, `dictionary` for a directory) stay as
  aliases: `kv_kind`, `Node.kv_kind`, `Stat.kv_kind`, `VALUE`, `DICTIONARY`.
- an object *id*: 40 lowercase hexadecimal digits, as git prints it
  (`Node.id`, `Stat.id`, `CommitInfo.id`, `Image.digest`, the CLI, JSON).
  The 20 raw bytes, for code that feeds the store, are `Node.raw_id`.
- a *mode*: git's file mode as an integer (`0o100644`, `0o100755`,
  `0o120000`, `0o040000`, `0o160000`) in the API and in JSON; text output
  shows it as git does, 6 octal digits (`mode_text`).
- a *mode of reading*: `light` (the default, everywhere: `Image.open`, every
  verb, the guest, `mount`) or `fast` (`MODES`, `DEFAULT_MODE`).

Standard library only, and cheap to import: the CLI's parsers and the
guest's start-up load it.
"""

from __future__ import annotations

from ..format import objects as obj

FILE = "file"
EXECUTABLE = "executable"
SYMLINK = "symlink"
DIRECTORY = "directory"
SUBMODULE = "submodule"
KINDS = (FILE, EXECUTABLE, SYMLINK, DIRECTORY, SUBMODULE)
_KIND_OF = {obj.MODE_DIR: DIRECTORY, obj.MODE_GITLINK: SUBMODULE, obj.MODE_LINK: SYMLINK,
            obj.MODE_EXEC: EXECUTABLE}

# Mirage_kv.RO's words, kept as aliases.
VALUE = "value"
DICTIONARY = "dictionary"

LIGHT = "light"
FAST = "fast"
MODES = (LIGHT, FAST)
DEFAULT_MODE = LIGHT
# The one help text of every `--mode` option.
MODE_HELP = ("light (default): walk the trees at each lookup, load nothing up front; fast: "
             "read the IDX and index every path at open (pays off for many lookups in an "
             "image without a path index, the OCaml docteur's; docteur's read the same in "
             "both)")


def kind_of(mode: int) -> str:
    """The kind of a path whose git mode is `mode` (a file for 100644 and
    the 100664 of old trees)."""
    return _KIND_OF.get(mode, FILE)


def kv_kind(kind: str) -> str:
    """Mirage_kv.RO's word for a kind: `dictionary` for a directory, `value`
    for anything else (a file, an executable, a link, a submodule)."""
    return DICTIONARY if kind == DIRECTORY else VALUE


def mode_text(mode: int) -> str:
    """A mode as text output shows it: git's 6 octal digits (`100644`)."""
    return f"{mode:06o}"
