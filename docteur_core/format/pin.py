"""The commit an image's URL pins: `https://host/any/path/<40 hex>.img`.

An image published under its commit's id names what it must hold, so a
reader given such a URL refuses any other commit, as if `--commit` had
been given (an explicit `--commit` wins). Only http(s) URLs pin: a local
file or an NBD export may be named anything. The last path segment is
taken as sent (percent-escapes decoded), any query or fragment ignored;
the id is returned in lower case, as ids are shown.

Pure: a string in, an id or None out.
"""

from __future__ import annotations

_HEX = frozenset("0123456789abcdefABCDEF")
SUFFIX = ".img"


def pin_of_url(source: str) -> str | None:
    """The commit id (40 lower-case hex digits) an http(s) URL whose last
    path segment is `<id>.img` pins; None for anything else."""
    if not isinstance(source, str) or not source[:8].lower().startswith(("http://",
                                                                          "https://")):
        return None  # before importing urllib: a guest opens /dev/vda, and pays nothing
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(source)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if not name.lower().endswith(SUFFIX):
        return None
    stem = name[:-len(SUFFIX)]
    if len(stem) != 40 or not all(c in _HEX for c in stem):
        return None
    return stem.lower()
