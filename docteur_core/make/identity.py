"""Who, when and why of the synthetic commit made for a directory source.

Pure functions: strings in, validated values out, `BuildError` with one
line on bad input. Same inputs, same commit bytes: that is what makes two
builds of the same directory byte-identical.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..errors import BuildError

DEFAULT_AUTHOR = "docteur <docteur@localhost>"
DEFAULT_MESSAGE = "docteur image\n"

_IDENT = re.compile(r"^([^<>\n]*?)\s*<([^<>\n]*)>$")


@dataclass(frozen=True)
class When:
    seconds: int  # since the epoch, UTC
    offset: int  # seconds east of UTC, a multiple of 60


def parse_author(text: str | None) -> bytes:
    """'Name <email>' as the bytes git writes in an author line."""
    text = DEFAULT_AUTHOR if text is None else text.strip()
    m = _IDENT.match(text)
    if not m or not m.group(1).strip():
        raise BuildError(f"author {text!r}: expected 'Name <email>'")
    if "\0" in text:
        raise BuildError(f"author {text!r}: contains a NUL byte")
    if not m.group(2).strip():
        raise BuildError(f"author {text!r}: the email is empty, and the OCaml docteur cannot "
                         "read a commit with an empty email")
    return f"{m.group(1).strip()} <{m.group(2).strip()}>".encode("utf-8")


def parse_date(text: str) -> When:
    """An RFC 3339 date-time, its UTC offset kept (git records it); also a
    date-time without a zone, read as UTC, and a plain date, midnight UTC
    (what people type; a local zone would make builds depend on the host)."""
    candidate = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", candidate):
        candidate += "T00:00:00"
    if re.search(r"[zZ]$", candidate):
        candidate = candidate[:-1] + "+00:00"
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?", candidate):
        candidate += "+00:00"
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}:\d{2}$", candidate):
        raise BuildError(
            f"date {text!r}: expected RFC 3339 (2026-01-01T12:00:00+02:00, "
            "2026-01-01T00:00:00Z), a date-time read as UTC (2026-01-01T00:00:00) "
            "or a date (2026-01-01, midnight UTC)")
    try:
        dt = datetime.fromisoformat(candidate.replace("t", "T"))
    except ValueError as exc:
        raise BuildError(f"date {text!r}: {exc}") from None
    delta = dt.utcoffset()
    assert delta is not None  # the pattern above requires a zone
    offset = int(delta.total_seconds())
    seconds = int(dt.timestamp())
    if seconds < 0:
        raise BuildError(f"date {text!r}: before 1970 cannot be recorded in a commit")
    return When(seconds, offset)


def default_date(environ: Mapping[str, str]) -> When:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else now, both UTC."""
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and epoch.strip():
        if not epoch.strip().isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH {epoch!r}: expected whole seconds since 1970")
        return When(int(epoch), 0)
    return When(int(time.time()), 0)


def message_bytes(text: str | None) -> bytes:
    msg = DEFAULT_MESSAGE if text is None else text
    if "\0" in msg:
        raise BuildError("message contains a NUL byte")
    if not msg.endswith("\n"):
        msg += "\n"
    return msg.encode("utf-8")


def commit_raw(tree_hex: str, author: bytes, when: When, message: bytes) -> bytes:
    """The body of a root commit, byte for byte as `git commit-tree` writes it."""
    from dulwich.objects import Commit

    commit = Commit()
    commit.tree = tree_hex.encode()
    commit.author = commit.committer = author
    commit.author_time = commit.commit_time = when.seconds
    commit.author_timezone = commit.commit_timezone = when.offset
    commit.message = message
    return commit.as_raw_string()
