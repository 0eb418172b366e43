"""HTTP range reads of an image, decided without a socket (sans-IO).

`blockdev/http.py` does the I/O; everything it decides lives here as pure
functions over a URL, a status and headers, so each rule (range honoured?
validator unchanged? redirect or error?) is unit-tested without a server.

An image is immutable and named by its commit, but the object behind a URL
can still be replaced. Reading half of one image and half of another would
give wrong answers, not errors, so the origin's validator (a strong `ETag`,
else `Last-Modified`) is pinned by the first response and every later
request carries it (`If-Match` / `If-Unmodified-Since`) and has its answer
checked against it: a change is `OriginChanged`, one line.

Two transport rules (issue 21): a redirect from an `https://` URL to a plain
`http://` one is refused at every hop (`judge`), and an origin that sends
neither an ETag nor a Last-Modified cannot be bound to one version, so it is
read only when the caller pins the commit (`require_validator`): every byte
is then checked back to that commit instead.

Standard library only: this runs in the reader, also inside a guest.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

from ..errors import DeviceError

HTTP_SCHEMES = ("http:", "https:")
# Redirects followed for one request; more is a loop (or a misconfigured
# origin) and is reported rather than followed forever.
MAX_REDIRECTS = 5
# The most one range request asks for: a large read is cut into requests of
# this size, so the per-request deadline ($DOCTEUR_HTTP_REQUEST_TIMEOUT, 120 s)
# asks an origin for 8 MiB per 120 s (70 KB/s) whatever the file's size.
MAX_REQUEST_BYTES = 8 << 20
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class RemoteError(DeviceError):
    """An image on an HTTP origin cannot be read: one line naming the URL
    (without its query string, which may hold a signature) and the reason."""


class OriginChanged(RemoteError):
    """The object behind the URL is not the one that was opened."""


class InsecureRedirect(RemoteError):
    """An https URL redirected to plain http: refused, whatever the hop."""


class NoValidator(RemoteError):
    """The origin sends neither ETag nor Last-Modified, and no commit is
    pinned: a replaced (or lying) object could not be told from the one
    opened."""


def is_http_url(spec: str) -> bool:
    return spec[:6].lower().startswith(HTTP_SCHEMES)


class Target:
    """Where one request goes: scheme, host, port and the request target
    (path and query string exactly as given: a presigned URL's signature
    covers them byte for byte)."""

    __slots__ = ("scheme", "host", "port", "target", "url")

    def __init__(self, scheme: str, host: str, port: int, target: str, url: str) -> None:
        self.scheme, self.host, self.port, self.target, self.url = scheme, host, port, target, url

    @property
    def display(self) -> str:
        """The URL for messages: no query string (it may carry credentials)."""
        return shown(self.url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and self.url == other.url

    def __repr__(self) -> str:
        return f"Target({self.display!r})"


def shown(url: str) -> str:
    """`url` without its query string and fragment, for messages and logs."""
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    return url[:cut] + ("?..." if cut < len(url) and url[cut] == "?" else "")


def parse_url(url: str) -> Target:
    """Split an http(s) URL into a `Target`; RemoteError if it is not one.

    The path and query are taken from the string itself, not rebuilt, so
    percent-escapes and parameter order stay as the signer made them.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RemoteError(f"{shown(url)}: not a usable URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise RemoteError(f"{shown(url)}: only http:// and https:// URLs are read")
    if not parts.hostname:
        raise RemoteError(f"{shown(url)}: no host in the URL")
    if parts.username is not None:
        raise RemoteError(f"{shown(url)}: user:password@ in a URL is not supported "
                          "(use a presigned URL)")
    rest = url[url.index("//") + 2:]
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[slash:].split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    if any(c <= " " or c == "\x7f" for c in target) or not target.isascii():
        raise RemoteError(f"{shown(url)}: spaces, control or non-ASCII characters in the URL "
                          "(percent-encode them)")
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80),
                  target, url.split("#", 1)[0])


# -- the validator -----------------------------------------------------------

class Validator:
    """What identifies the version of the object that was opened.

    `etag` is a strong entity tag (sent as If-Match), `last_modified` the
    date (sent as If-Unmodified-Since when there is no strong tag), `weak`
    a weak tag (only compared: If-Match needs a strong one).
    """

    __slots__ = ("etag", "weak", "last_modified")

    def __init__(self, etag: str | None = None, weak: str | None = None,
                 last_modified: str | None = None) -> None:
        self.etag, self.weak, self.last_modified = etag, weak, last_modified

    def __bool__(self) -> bool:
        return bool(self.etag or self.weak or self.last_modified)

    def __repr__(self) -> str:
        return f"Validator(etag={self.etag!r}, weak={self.weak!r}, last_modified={self.last_modified!r})"


def pin_validator(headers: Mapping[str, str]) -> Validator:
    """The validator of a response (`headers`: a mapping with lower-case keys)."""
    tag = (headers.get("etag") or "").strip() or None
    date = (headers.get("last-modified") or "").strip() or None
    if tag and tag.startswith("W/"):
        return Validator(None, tag, date)
    return Validator(tag, None, date)


def request_headers(start: int, end: int, validator: Validator | None) -> dict[str, str]:
    """Headers asking for bytes [start, end) of the pinned version."""
    headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    if validator is not None:
        if validator.etag:
            headers["If-Match"] = validator.etag
        elif validator.last_modified:
            headers["If-Unmodified-Since"] = validator.last_modified
    return headers


def same_version(pinned: Validator, headers: Mapping[str, str]) -> bool:
    """Whether a response's validators agree with the pinned ones (a
    validator the response omits is not held against it)."""
    got = pin_validator(headers)
    if pinned.etag and got.etag and got.etag != pinned.etag:
        return False
    if pinned.etag and got.weak:
        return False
    if pinned.weak and (got.weak or got.etag) and (got.weak or got.etag) != pinned.weak:
        return False
    if pinned.last_modified and got.last_modified and got.last_modified != pinned.last_modified:
        return False
    return True


# -- the transport rules ----------------------------------------------------

def check_redirect(url: str, location: str, status: int = 302) -> str:
    """`location` (absolute), unless following it would leave TLS: a
    redirect from an https URL to an http one is `InsecureRedirect`.
    Applied to every hop, so https -> https -> http is refused at its
    second hop, and so is a redirect met on a later read."""
    if url[:6].lower() == "https:" and location[:5].lower() == "http:":
        raise InsecureRedirect(
            f"{shown(url)}: refused an HTTP {status} redirect from https to plain http "
            f"({shown(location)}): the image would be read unencrypted and unauthenticated")
    return location


def require_validator(url: str, validator: Validator | None, pinned: bool) -> None:
    """An origin without ETag or Last-Modified is read only under a pin:
    without a validator nothing binds later reads to the object the first
    one saw, so only checking every byte against a pinned commit can."""
    if pinned or validator:
        return
    raise NoValidator(
        f"{shown(url)}: the origin sends neither ETag nor Last-Modified, so nothing binds "
        "later reads to the image first read (a replaced object could be mixed in); read "
        "it only with its commit pinned: --commit ID (or a URL ending in ID.img)")


# -- judging a response ------------------------------------------------------

class Redirect:
    """Go to `url` (absolute, the Location resolved against the request's URL)."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url


class Partial:
    """A 206 that answers the request: bytes [start, end) of an object of `total`."""

    __slots__ = ("start", "end", "total", "validator")

    def __init__(self, start: int, end: int, total: int, validator: Validator) -> None:
        self.start, self.end, self.total, self.validator = start, end, total, validator


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """`bytes a-b/total` as (a, b + 1, total); None if absent or malformed
    (an unknown total, `*`, is malformed here: an image has a size)."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, _, total = spec.strip().partition("/")
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    a, b, t = int(first), int(last), int(total)
    if a > b or b >= t:
        return None
    return a, b + 1, t


def judge(url: str, status: int, reason: str, headers: Mapping[str, str], start: int, end: int,
          pinned: Validator | None, size: int | None) -> Redirect | Partial:
    """What the answer (`status`, `headers` with lower-case keys) to a request
    for bytes [start, end) of `url` means.

    `pinned` and `size` are None for the first request (which pins them).
    Returns a `Redirect` to follow or the `Partial` to read; raises
    `OriginChanged` or `RemoteError` with the one line to show.
    """
    where = shown(url)
    if status in REDIRECT_STATUSES:
        location = headers.get("location")
        if not location:
            raise RemoteError(f"{where}: HTTP {status} redirect without a Location")
        return Redirect(check_redirect(url, urljoin(url, location.strip()), status))
    if status == 412 or (status == 416 and size is not None):
        raise OriginChanged(f"{where}: the image changed at the origin since it was opened "
                            f"(HTTP {status} for a request bound to its first version); "
                            "open it again")
    if status == 200:
        raise RemoteError(f"{where}: the origin ignores range requests (HTTP 200 with the "
                          "whole object for a Range request); serve the image from a server "
                          "that supports them")
    if status == 416:
        raise RemoteError(f"{where}: the object is empty (HTTP 416), not an image")
    if status in (401, 403):
        raise RemoteError(f"{where}: access denied (HTTP {status}"
                          + (f" {reason}" if reason else "")
                          + "); a presigned URL may have expired")
    if status in (404, 410):
        raise RemoteError(f"{where}: no such object at the origin (HTTP {status})")
    if status != 206:
        raise RemoteError(f"{where}: the origin answered HTTP {status}"
                          + (f" {reason}" if reason else "") + " to a range request")
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise RemoteError(f"{where}: the origin sent the range {encoding}-encoded; "
                          "an image must be served as is")
    if headers.get("content-type", "").lower().startswith("multipart/"):
        raise RemoteError(f"{where}: the origin answered one range with a multipart body")
    got = parse_content_range(headers.get("content-range"))
    if got is None:
        raise RemoteError(f"{where}: HTTP 206 without a usable Content-Range "
                          f"({headers.get('content-range')!r})")
    a, b, total = got
    validator = pin_validator(headers)
    if pinned is not None and not same_version(pinned, headers):
        raise OriginChanged(f"{where}: the image changed at the origin since it was opened "
                            "(its validator differs); open it again")
    if size is not None and total != size:
        raise OriginChanged(f"{where}: the image changed at the origin since it was opened "
                            f"(it was {size} bytes, it is {total}); open it again")
    if a != start or b != min(end, total):
        raise RemoteError(f"{where}: asked for bytes {start}-{end - 1}, the origin sent "
                          f"{a}-{b - 1}")
    length = headers.get("content-length")
    if length is not None and length.strip() != str(b - a):
        raise RemoteError(f"{where}: Content-Length {length.strip()} does not match "
                          f"Content-Range {a}-{b - 1}")
    return Partial(a, b, total, validator)


def fetch_span(offset: int, length: int, capacity: int, chunk: int) -> tuple[int, int]:
    """The chunk-aligned byte span [start, end) a read of [offset, offset +
    length) fetches: at least one chunk (the bounded read-ahead), never past
    the end of the object."""
    start = offset - offset % chunk
    end = offset + length
    end = min(capacity, end + (-end) % chunk)
    return start, max(start, end)


def request_spans(start: int, end: int, most: int = MAX_REQUEST_BYTES) -> list[tuple[int, int]]:
    """[start, end) cut into consecutive spans of at most `most` bytes, one
    request each: the deadline of a request then bounds a slow origin, not
    the size of the file being read."""
    return [(s, min(end, s + most)) for s in range(start, end, most)]
