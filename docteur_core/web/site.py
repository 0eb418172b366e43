"""What a request is answered, sans-IO: paths to entities, entities to responses.

Two steps, so that the socket shell can answer most requests without
touching the image:

1. `target_key(target)` turns a request target into the key of what it
   names (decoded path parts, a trailing slash or not), or refuses it;
   `Site.resolve(image, key)` looks it up in the image (verified reads)
   and returns an `Entity`: a file's checked content with its ETag and
   type, a directory's index or listing, a redirect, or an error. An
   image never changes, so entities are kept (`Site.cached`), bounded.
2. `Site.respond(request, entity, query)` applies the request's method,
   conditions and ranges to an entity: a `Response` (status, headers,
   body segments). Pure: no image, no socket.

Rules (what users expect of a static server; docs/http.md):
- GET and HEAD; another method is 405 with `Allow: GET, HEAD`;
- a path is percent-decoded segment by segment; an encoded slash (%2F),
  a `.` or `..` segment (raw or encoded), a NUL, or
  a name git refuses to check out (`.git` and its aliases,
  `format.objects.refused_name`) is 404 before the image is asked: nothing
  outside the tree or inside a repository's control files is ever named;
  empty segments (`//`) are merged, as nginx does; a backslash is a
  character of a name (git's trees have no other separator than `/`);
- a folder without its trailing slash is a 301 to it with the slash; with
  it, its `index.html` (a file) is served, or, with `listing`, an HTML
  list of its entries (weak ETag: the tree's id), else 404;
- a symbolic link is a 302 to its target when the target, taken relative
  to the link's folder, stays inside the image (and names no refused
  name); an absolute target, or one that climbs out, is 404: a link is
  never followed, outside or in;
- a submodule, a file asked with a trailing slash, a missing path: 404;
- a file: `ETag` = its blob id (strong: the id is the content's hash),
  `Last-Modified` = the commit's date (the image holds one commit),
  `Content-Type` from its extension (Python's built-in table, the same on
  every host and in the guest; application/octet-stream when unknown),
  `Accept-Ranges: bytes`;
- conditions in RFC 9110's order: If-Match (412), If-Unmodified-Since
  (412), If-None-Match (304), If-Modified-Since (304), then Range with
  If-Range (206, multipart/byteranges for several ranges, 416 when none
  can be satisfied; `ranges.py`);
- a damaged or forged object, an image over a limit, a device that fails:
  500, with none of the object's bytes sent (the whole file is checked
  before a response exists: `Image.content`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, BinaryIO

from ..errors import DamagedImage, DocteurError, NotADirectory, NotAFile, NotFound
from ..format import objects as obj
from .ranges import if_range_holds, parse_ranges

if TYPE_CHECKING:
    import mimetypes

    from ..reader.image import Image, Node
    from .request import Request

# A body: bytes, or a checked temporary file (Image.content).
Body = bytes | BinaryIO
# A piece of a response: bytes, or (file, offset, length) to send from the file.
Segment = bytes | tuple[BinaryIO, int, int]
# What target_key makes of a path: (names, trailing slash).
Key = tuple[tuple[str, ...], bool]

INDEX = "index.html"
_FILES = (obj.MODE_FILE, obj.MODE_EXEC, 0o100664)
REASONS = {
    200: "OK", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    412: "Precondition Failed", 414: "URI Too Long", 416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 505: "HTTP Version Not Supported",
}
# Bodies kept in memory, in all; one larger than a quarter of it is not kept.
CACHE_BYTES = 64 << 20
# Large files kept as checked temporary files (on disk; the guest's /tmp is
# its memory).
CACHE_SPOOLS = 4
CACHE_ENTRIES = 100_000

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HEX = frozenset("0123456789abcdefABCDEF")
# Kept as they are in a Location or a listing's link; anything else is %XX.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")


def http_date(epoch: int) -> str:
    """IMF-fixdate (RFC 9110 5.6.7), not the locale's names."""
    import time

    t = time.gmtime(epoch)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def parse_http_date(text: str) -> int | None:
    """Seconds since the epoch of an IMF-fixdate, or None (the obsolete
    forms are rare and a condition on a date that cannot be read is
    ignored, as RFC 9110 says)."""
    parts = text.strip().split(" ")
    if len(parts) != 6 or parts[5] != "GMT" or parts[2] not in _MONTHS:
        return None
    try:
        day, year = int(parts[1]), int(parts[3])
        hh, mm, ss = (int(x) for x in parts[4].split(":"))
    except ValueError:
        return None
    month = _MONTHS.index(parts[2]) + 1
    if not (1 <= day <= 31 and 0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss <= 60):
        return None
    # Days from the civil date (Howard Hinnant's algorithm).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss


def quote_path(path: str) -> str:
    """A path of the image as it goes in a URL: UTF-8 (the name's own bytes),
    percent-encoded but for unreserved characters and `/`."""
    out = []
    for b in obj.encode_name(path):
        out.append(chr(b) if b in _SAFE or b == 0x2F else f"%{b:02X}")
    return "".join(out)


def _escape_html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


class NotHere(Exception):
    """A target refused before the image is asked: `status` (404 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _unquote(segment: str) -> bytes:
    """Percent-decode one path segment (an encoded slash was refused)."""
    if "%" not in segment:
        return segment.encode("latin-1")
    out = bytearray()
    pieces = segment.split("%")
    out += pieces[0].encode("latin-1")
    for piece in pieces[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            raise NotHere(400, "a % not followed by two hexadecimal digits")
        out.append(int(piece[:2], 16))
        out += piece[2:].encode("latin-1")
    return bytes(out)


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target in origin or absolute form."""
    if not target.startswith("/"):
        low = target[:8].lower()
        if low.startswith(("http://", "https://")):
            rest = target.split("//", 1)[1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        else:
            raise NotHere(400, "the request target is not a path")
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def target_key(path: str) -> tuple[tuple[str, ...], bool]:
    """(names, trailing slash) of a request path; NotHere for one that
    would leave the tree or name what no client may see (module rules)."""
    names = []
    for raw in path.split("/"):
        if not raw:
            continue
        low = raw.lower()
        if "%2f" in low:
            raise NotHere(404, "an encoded slash")
        seg = _unquote(raw)
        if seg in (b".", b"..") or b"\0" in seg or b"/" in seg:
            raise NotHere(404, "a . or .. segment")
        if obj.refused_name(seg, obj.MODE_FILE):
            raise NotHere(404, "a name standing for .git")
        names.append(obj.decode_name(seg))
    return tuple(names), path.endswith("/") and bool(names)


class Entity:
    """What a key resolved to: `status` 200 (a file or a listing: `body`,
    bytes or a checked temporary file, of `size` bytes), 301/302 (a
    redirect to `location`), or an error status; `note` says why, for the
    log."""

    __slots__ = ("status", "body", "size", "etag", "content_type", "location", "note")

    def __init__(self, status: int, body: Body = b"", etag: str = "", content_type: str = "",
                 location: str = "", note: str = "") -> None:
        self.status = status
        self.body = body
        if isinstance(body, (bytes, bytearray)):
            self.size = len(body)
        else:
            self.size = os.fstat(body.fileno()).st_size
        self.etag = etag
        self.content_type = content_type
        self.location = location
        self.note = note


class Response:
    """A status, its headers, and body segments (bytes, or (file, offset,
    length) for the shell to send from the file); `length` is the body's
    size, also for a HEAD that sends none."""

    __slots__ = ("status", "headers", "segments", "length", "note")

    def __init__(self, status: int, headers: list[tuple[str, str]], segments: list[Segment],
                 length: int, note: str = "") -> None:
        self.status = status
        self.headers = headers
        self.segments = segments
        self.length = length
        self.note = note


def _types() -> mimetypes.MimeTypes:
    import mimetypes

    types = mimetypes.MimeTypes()  # Python's own table only: the same everywhere
    for ext, kind in ((".md", "text/markdown"), (".webp", "image/webp"),
                      (".woff", "font/woff"), (".woff2", "font/woff2"),
                      (".mjs", "text/javascript"), (".avif", "image/avif")):
        # The typeshed of mypy 1.6.1 (the test extra's floor) has no
        # MimeTypes.add_type (Python has had it for ever); newer ones do, hence
        # unused-ignore.
        types.add_type(kind, ext)  # type: ignore[attr-defined,unused-ignore]
    return types


_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                  "xz": "application/x-xz", "compress": "application/x-compress",
                  "br": "application/octet-stream"}


class Site:
    """The answers of one image. `last_modified` is the commit's date;
    `listing` lists folders without an index. Thread-safe: `resolve`
    takes the image to read with (each reader thread has its own)."""

    def __init__(self, commit_time: int, *, listing: bool = False,
                 cache_bytes: int = CACHE_BYTES, cache_spools: int = CACHE_SPOOLS) -> None:
        self.last_modified = http_date(commit_time)
        self.commit_time = commit_time
        self.listing = listing
        self._types = _types()
        self._lock = threading.Lock()
        self._cache: OrderedDict[Key, Entity] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._spools: OrderedDict[Key, Entity] = OrderedDict()
        self._max_spools = cache_spools

    # -- entities -----------------------------------------------------------

    def cached(self, key: Key) -> Entity | None:
        """The entity of `key` if it was resolved before (any thread)."""
        e = self._cache.get(key)
        if e is None:
            e = self._spools.get(key)
        return e

    def _keep(self, key: Key, e: Entity) -> None:
        if e.status >= 500:
            return  # a device that failed may answer next time
        with self._lock:
            if isinstance(e.body, (bytes, bytearray)):
                if e.size > self._cache_bytes // 4 or key in self._cache:
                    return
                self._cache[key] = e
                self._cached_bytes += e.size
                while self._cached_bytes > self._cache_bytes or len(self._cache) > CACHE_ENTRIES:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.size
            else:
                if key in self._spools:
                    return
                self._spools[key] = e
                # An evicted file closes when the last response sending it is done.
                while len(self._spools) > self._max_spools:
                    self._spools.popitem(last=False)

    def resolve(self, image: Image, key: Key) -> Entity:
        """The entity of `key` (from `target_key`), read from `image`."""
        e = self.cached(key)
        if e is not None:
            return e
        try:
            e = self._resolve(image, key)
        except (NotFound, NotADirectory, NotAFile):
            e = Entity(404)
        except DamagedImage as exc:
            e = Entity(500, note=str(exc))
        except DocteurError as exc:  # a device that failed
            e = Entity(500, note=str(exc))
        self._keep(key, e)
        return e

    def _resolve(self, image: Image, key: Key) -> Entity:
        names, trailing = key
        path = "/".join(names)
        node = image.node(path)
        if node.mode == obj.MODE_DIR:
            if names and not trailing:
                return Entity(301, location="/" + quote_path(path) + "/")
            entries = image.entries(node)
            index = next((e for e in entries if e.name == INDEX), None)
            if index is not None and index.mode in _FILES:
                return self._file(image, index)
            if index is not None and index.mode == obj.MODE_LINK:
                return self._link(image, index)
            if self.listing:
                return self._listing(path, node, entries)
            return Entity(404, note="a folder without index.html")
        if trailing:
            return Entity(404)
        if node.mode == obj.MODE_LINK:
            return self._link(image, node)
        if node.mode in _FILES:
            return self._file(image, node)
        return Entity(404, note="a submodule")

    def content_type(self, name: str) -> str:
        kind, encoding = self._types.guess_type(name, strict=False)
        if encoding is not None:
            return _ENCODED_TYPES.get(encoding, "application/octet-stream")
        return kind or "application/octet-stream"

    def _file(self, image: Image, node: Node) -> Entity:
        body = image.content(node)
        return Entity(200, body, f'"{node.id}"', self.content_type(node.name))

    def _link(self, image: Image, node: Node) -> Entity:
        target = image.readlink(node)
        if target.startswith("/"):
            return Entity(404, note="a link out of the image")
        parts = node.path.split("/")[:-1]
        for piece in target.split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                if not parts:
                    return Entity(404, note="a link out of the image")
                parts.pop()
                continue
            if obj.refused_name(obj.encode_name(piece), obj.MODE_FILE):
                return Entity(404, note="a link to .git")
            parts.append(piece)
        where = "/" + quote_path("/".join(parts))
        if target.endswith("/") and parts:
            where += "/"
        return Entity(302, location=where)

    def _listing(self, path: str, node: Node, entries: list[Node]) -> Entity:
        title = _escape_html("/" + path + ("/" if path else ""))
        rows = []
        if path:
            rows.append('<li><a href="../">../</a></li>')
        for e in entries:
            if e.mode == obj.MODE_GITLINK:
                continue
            shown = e.name + ("/" if e.mode == obj.MODE_DIR else "")
            href = quote_path(e.name) + ("/" if e.mode == obj.MODE_DIR else "")
            rows.append(f'<li><a href="{_escape_html(href)}">{_escape_html(shown)}</a></li>')
        html = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n"
                "<ul>\n" + "\n".join(rows) + "\n</ul>\n</body></html>\n")
        return Entity(200, html.encode("utf-8", "surrogateescape"), f'W/"{node.id}"',
                      "text/html; charset=utf-8")

    # -- responses ------------------------------------------------------------

    def error(self, status: int, note: str = "", head: bool = False) -> Response:
        body = f"{status} {REASONS.get(status, '')}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))]
        if status == 405:
            headers.append(("Allow", "GET, HEAD"))
        return Response(status, headers, [] if head else [body], len(body), note)

    def respond(self, request: Request, entity: Entity, query: str = "") -> Response:
        head = request.method == "HEAD"
        status = entity.status
        if status in (301, 302):
            location = entity.location + ("?" + query if query else "")
            r = self.error(status, entity.note, head)
            r.headers.append(("Location", location))
            return r
        if status != 200:
            return self.error(status, entity.note, head)
        h = request.headers
        etag, lm = entity.etag, self.last_modified
        if "if-match" in h:
            if not _matches(h["if-match"], etag, weak=False):
                return self.error(412, head=head)
        elif "if-unmodified-since" in h:
            since = parse_http_date(h["if-unmodified-since"])
            if since is not None and self.commit_time > since:
                return self.error(412, head=head)
        if "if-none-match" in h:
            if _matches(h["if-none-match"], etag, weak=True):
                return Response(304, [("ETag", etag), ("Last-Modified", lm)], [], 0)
        elif "if-modified-since" in h:
            since = parse_http_date(h["if-modified-since"])
            if since is not None and self.commit_time <= since:
                return Response(304, [("ETag", etag), ("Last-Modified", lm)], [], 0)
        size = entity.size
        common = [("ETag", etag), ("Last-Modified", lm), ("Accept-Ranges", "bytes")]
        ranges = None
        if "range" in h and not head and (
                "if-range" not in h or if_range_holds(h["if-range"], etag, lm)):
            ranges = parse_ranges(h["range"], size)
        if ranges is None:
            headers = [("Content-Type", entity.content_type), ("Content-Length", str(size))]
            return Response(200, headers + common, [] if head else [_part(entity, 0, size)],
                            size)
        if not ranges:
            r = self.error(416)
            r.headers.append(("Content-Range", f"bytes */{size}"))
            return r
        if len(ranges) == 1:
            a, b = ranges[0]
            headers = [("Content-Type", entity.content_type),
                       ("Content-Range", f"bytes {a}-{b}/{size}"),
                       ("Content-Length", str(b - a + 1))]
            return Response(206, headers + common, [_part(entity, a, b - a + 1)], b - a + 1)
        boundary = os.urandom(12).hex()
        segments: list[Segment] = []
        length = 0
        for a, b in ranges:
            part_head = (f"\r\n--{boundary}\r\nContent-Type: {entity.content_type}\r\n"
                         f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode("latin-1")
            segments += [part_head, _part(entity, a, b - a + 1)]
            length += len(part_head) + b - a + 1
        tail = f"\r\n--{boundary}--\r\n".encode()
        segments.append(tail)
        length += len(tail)
        headers = [("Content-Type", f"multipart/byteranges; boundary={boundary}"),
                   ("Content-Length", str(length))]
        return Response(206, headers + common, segments, length)


def _part(entity: Entity, offset: int, length: int) -> Segment:
    body = entity.body
    if isinstance(body, (bytes, bytearray)):
        if offset == 0 and length == len(body):
            return body
        return body[offset:offset + length]
    return (body, offset, length)


def _matches(value: str, etag: str, weak: bool) -> bool:
    """Whether an If-Match / If-None-Match list names `etag` (weak or
    strong comparison, RFC 9110 8.8.3.2)."""
    value = value.strip()
    if value == "*":
        return True
    mine = etag[2:] if etag.startswith("W/") else etag
    if not weak and etag.startswith("W/"):
        return False
    for tag in value.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == mine:
            return True
    return False
