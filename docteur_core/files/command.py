"""`docteur ls`, `cat`, `stat`, `tree` and `info`: the reader's verbs
(docteur_core/reader/commands.py, which the guest runs too) as host
subcommands, with the trust rules every host reader follows (trust.py: the
pin, the signers, verified reads) and the shared reading options.

The reader stays free of argparse and of the host's trust code: this module
is the thin shell that parses a command line, opens the image and hands it
to `run_verb`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import options
from ..errors import DamagedImage, DocteurError
from ..reader.commands import FLAGS, VERBS, run_verb
from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES
from ..trust import open_image

if TYPE_CHECKING:
    import argparse


def _common(parser: argparse.ArgumentParser, verb: str) -> None:
    _, lo, hi, _ = VERBS[verb]
    parser.add_argument("image", metavar="IMAGE", help="an image file, a device, an NBD "
                        "URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH), "
                        "or an http(s):// URL (read by range requests)")
    if hi:
        parser.add_argument("path", metavar="PATH", nargs=None if lo else "?", default="",
                            help="a /-separated path in the image")
    if verb == "ls":
        parser.add_argument("-r", dest="recursive", action="store_true",
                            help="list every file under PATH with its path, as git ls-tree -r")
        parser.add_argument("-l", dest="long", action="store_true",
                            help="add each file's size in bytes, as git ls-tree -l")
    if verb in FLAGS and "--json" in FLAGS[verb]:
        parser.add_argument("--json", action="store_true",
                            help="one JSON document on stdout (fields in docs/reading.md)")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
    options.add_reading_arguments(parser)


def _runner(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with open_image(args.image, args, max_object_size=args.max_object_size,
                            max_lookup_bytes=args.max_lookup_bytes,
                            max_paths=args.max_paths) as image:
                # An empty PATH is the root, not a missing argument.
                rest = [args.path] if getattr(args, "path", None) is not None else []
                if verb in ("ls", "tree") and not rest:
                    rest = [""]
                flags = {flag for flag, on in (("-r", getattr(args, "recursive", False)),
                                               ("-l", getattr(args, "long", False)),
                                               ("--json", getattr(args, "json", False))) if on}
                return run_verb(image, verb, rest, sys.stdout.buffer, flags)
        except DamagedImage as exc:  # name the image: the user may have several
            raise DocteurError(f"{args.image}: {exc}") from None
    return run


_HELP = {
    "ls": "List a directory of an image, one entry a line: MODE TYPE ID<TAB>NAME[/]\n\n"
          "as `git ls-tree` prints it (core.quotePath=false): a name holding a control\n"
          "character, '\"' or '\\' is quoted with C escapes, so each entry is one line.\n"
          "-r lists every file below PATH with its path and -l adds sizes, exactly as\n"
          "`git -c core.quotePath=false ls-tree -r -l` does.",
    "cat": "Write a file of an image to stdout, byte for byte.",
    "stat": "Show a path's kind, mode, size (entries, for a directory) and object id.",
    "tree": "Draw the hierarchy of an image under a path.",
    "info": "Show an image's commit (id, tree, author, date, message) and layout.",
}


def _adder(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _common(parser, verb)
    add_arguments.__doc__ = _HELP[verb]
    return add_arguments


COMMANDS = {verb: (_adder(verb), _runner(verb)) for verb in VERBS}
