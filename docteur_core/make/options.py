"""`docteur make`'s own option values (--date, --author, --branch; diff's
--old-branch/--new-branch take make's --branch names): argparse `type=`
functions that check a value as the build would, so a typo costs a usage
line, not a build started for nothing. The shared kinds are in
`docteur_core/options.py`."""

from __future__ import annotations

from collections.abc import Callable

from ..options import _refuse


def date(text: str) -> str:
    """--date: RFC 3339 (its UTC offset kept), a date-time without a zone
    (read as UTC) or a plain date (midnight UTC). Checked here, kept as
    given: `make_image` takes the text (`make.identity.parse_date`)."""
    from .identity import parse_date

    return _checked_by_make(parse_date, "date", text)


def author(text: str) -> str:
    """--author 'Name <email>': checked here as the build checks it
    (`make.identity.parse_author`: a name, an email, not empty), kept as
    given, so a typo costs a usage line, not a build started for nothing."""
    from .identity import parse_author

    return _checked_by_make(parse_author, "author", text)


def _checked_by_make(parse: Callable[[str], object], name: str, text: str) -> str:
    """`text` if the build's own `parse` takes it, else a usage error in its words."""
    from ..errors import BuildError

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
    from .repository import valid_ref

    if not valid_ref(text):
        raise _refuse(f"{text!r} is not a branch, tag or commit name: it must not be empty, "
                      "start with '-', or hold a NUL or a newline")
    return text
