"""Option values every verb shares: one argparse `type=` function per kind.

A bad value is then a usage error raised by the verb's own parser: exit
status 2, the verb's usage line, and the same words whichever verb took
the option (`docteur make --block-size 1000` and `docteur ls --block-size
1000` say the same thing). Nothing heavy is imported here: `docteur
--help` and the guest's start-up stay fast (argparse itself is imported
only when a value is refused).
"""

from __future__ import annotations


def _refuse(text: str):
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


def date(text: str) -> str:
    """--date: RFC 3339 (its UTC offset kept), a date-time without a zone
    (read as UTC) or a plain date (midnight UTC). Checked here, kept as
    given: `make_image` takes the text (`make.identity.parse_date`)."""
    from .make.identity import parse_date

    return _checked_by_make(parse_date, "date", text)


def author(text: str) -> str:
    """--author 'Name <email>': checked here as the build checks it
    (`make.identity.parse_author`: a name, an email, not empty), kept as
    given, so a typo costs a usage line, not a build started for nothing."""
    from .make.identity import parse_author

    return _checked_by_make(parse_author, "author", text)


def _checked_by_make(parse, name: str, text: str) -> str:
    """`text` if the build's own `parse` takes it, else a usage error in its words."""
    from .errors import BuildError

    try:
        parse(text)
    except BuildError as exc:
        words = str(exc)  # "<name> '...': why": argparse already names the option
        prefix = name + " "
        raise _refuse(words[len(prefix):] if words.startswith(prefix) else words) from None
    return text


def branch(text: str) -> str:
    """--branch REF (make) and --old-branch/--new-branch REF (diff): a name git
    may be given (`make.repository.valid_ref`); whether the repository has
    it is known only when it is read."""
    from .make.repository import valid_ref

    if not valid_ref(text):
        raise _refuse(f"{text!r} is not a branch, tag or commit name: it must not be empty, "
                      "start with '-', or hold a NUL or a newline")
    return text


def cache_size(text: str) -> str:
    """serve's --cache-size: `auto`, or a size nbdkit's cache filter takes
    (`serve.sizes`: 64M, 1G, 1048576; at least 1M). Returned as given: nbdkit
    gets exactly what the user wrote."""
    if text == "auto":
        return text
    from .serve.sizes import cache_size_problem

    why = cache_size_problem(text)
    if why is not None:
        raise _refuse(f"{text!r} is {why}")
    return text


def commit_id(text: str) -> str:
    """--commit ID: the commit an image must hold, as 40 hexadecimal digits
    (a full SHA-1 id: an abbreviation could be matched by a forged one).
    Returned in lower case, as every id is shown."""
    if len(text) != 40 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise _refuse(f"{text!r} is not a commit id: 40 hexadecimal digits are needed")
    return text.lower()


def add_trust_arguments(parser) -> None:
    """--commit, --no-verify and --allowed-signers: what every verb that
    reads an image trusts (see docs in the README's "Trust")."""
    parser.add_argument("--commit", metavar="ID", type=commit_id, default=None,
                        help="the commit the image must hold (40 hex digits): any other "
                        "is refused before a byte is read; an http(s) URL ending in "
                        "ID.img pins ID unless --commit says otherwise")
    parser.add_argument("--allowed-signers", metavar="FILE", default=None,
                        help="accept a commit signed by a key of FILE (git's "
                        "gpg.ssh.allowedSignersFile format, checked with ssh-keygen -Y "
                        "verify) instead of a pinned id")
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=True,
                        help="do not check objects against their ids (the default checks "
                        "every object read back to the commit)")
    parser.add_argument("--verify", dest="verify", action="store_true",
                        help="check every object read (the default; kept for old scripts)")
