"""Option values every verb shares: one argparse `type=` function per kind,
and the arguments of every verb that reads an image (the block size, trust,
the limits). A stage's own option types live with it (`make/options.py`:
--date, --author, --branch; `serve/options.py`: --cache-size): this module
imports no stage.

A bad value is then a usage error raised by the verb's own parser: exit
status 2, the verb's usage line, and the same words whichever verb took
the option (`docteur make --block-size 1000` and `docteur ls --block-size
1000` say the same thing). Nothing heavy is imported here: `docteur
--help` and the guest's start-up stay fast (argparse itself is imported
only when a value is refused).
"""

from __future__ import annotations

TYPE_CHECKING = False  # (argparse reaches here only as the parser a verb passes in)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable


def _refuse(text: str) -> argparse.ArgumentTypeError:
    from argparse import ArgumentTypeError

    return ArgumentTypeError(text)


def block_size(text: str) -> int:
    """--block-size N: a power of two from 512 to 1 GiB, for building and
    reading alike (`format.layout.valid_block_size`)."""
    from .format.layout import block_size_rule, valid_block_size

    try:
        n = int(text, 10)
    except ValueError:
        n = 0
    if not valid_block_size(n):
        raise _refuse(f"{text!r} is not a block size: {block_size_rule()}")
    return n


def count(text: str) -> int:
    """A positive whole number (limits, iterations)."""
    if not text.isdigit() or int(text) <= 0:
        raise _refuse(f"{text!r} is not a positive whole number")
    return int(text)


def seconds(text: str) -> float:
    """A positive, finite number of seconds (timeouts)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _refuse(f"{text!r} is not a positive number of seconds")
    return value


def commit_id(text: str) -> str:
    """--commit ID: the commit an image must hold, as 40 hexadecimal digits
    (a full SHA-1 id: an abbreviation could be matched by a forged one).
    Returned in lower case, as every id is shown."""
    if len(text) != 40 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise _refuse(f"{text!r} is not a commit id: 40 hexadecimal digits are needed")
    return text.lower()


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """--commit, --allowed-signers and --no-verify: what every verb that
    reads an image trusts (see docs/trust.md)."""
    add_pin_arguments(parser)
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=True,
                        help="do not check objects against their ids (the default checks "
                        "every object read back to the commit)")
    parser.add_argument("--verify", dest="verify", action="store_true",
                        help="check every object read (the default; kept for old scripts)")


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    """--commit and --allowed-signers: which image is wanted (`verify`
    checks every object anyway, so it takes these alone)."""
    parser.add_argument("--commit", metavar="ID", type=commit_id, default=None,
                        help="the commit the image must hold (40 hex digits): any other "
                        "is refused before a byte is read; an http(s) URL ending in "
                        "ID.img pins ID unless --commit says otherwise")
    parser.add_argument("--allowed-signers", metavar="FILE", default=None,
                        help="accept a commit signed by a key of FILE (git's "
                        "gpg.ssh.allowedSignersFile format, checked with ssh-keygen -Y "
                        "verify) instead of a pinned id")


def add_reading_arguments(parser: argparse.ArgumentParser,
                          limits: Iterable[str] = ("max_object_size", "max_lookup_bytes",
                                                   "max_paths")) -> None:
    """--block-size, the trust options and the limits, for every verb that
    opens an image."""
    parser.add_argument("--block-size", metavar="N", type=block_size, default=None,
                        help="the device's block size (default: probed, or 512)")
    add_trust_arguments(parser)
    add_limit_arguments(parser, limits)


# The reader's limits as options (format/limits.py): dest -> (metavar, help).
LIMIT_OPTIONS = {
    "max_object_size": ("BYTES", "the most bytes held for one object"),
    "max_lookup_bytes": ("BYTES", "the most bytes built for one lookup, delta chain included"),
    "max_paths": ("N", "the most paths a walk may name"),
}


def add_limit_arguments(parser: argparse.ArgumentParser,
                        names: Iterable[str] = tuple(LIMIT_OPTIONS)) -> None:
    """--max-object-size, --max-lookup-bytes, --max-paths (those `names`
    asks for), with the shared defaults: every command that reads an image
    offers the same limits with the same words."""
    from .format import limits

    for name in names:
        metavar, text = LIMIT_OPTIONS[name]
        parser.add_argument("--" + name.replace("_", "-"), metavar=metavar, type=count,
                            default=getattr(limits, name.upper()),
                            help=f"{text} (default %(default)s)")
