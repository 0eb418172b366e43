"""HTTP/1.x requests out of bytes, sans-IO.

`RequestParser.feed(data)` takes what a connection received; `next()`
returns the next whole request head (pipelined requests come one at a
time) or None until more bytes arrive. Rules, as a static server needs
them and no more:

- a head ends at an empty line (CRLF, or a bare LF as many clients send);
  it may be at most MAX_HEAD bytes, its request target MAX_TARGET (431 and
  414 otherwise, and the connection is closed);
- the request line is `METHOD SP TARGET SP HTTP/1.x`; another major
  version is 505, anything else 400; header names are tokens, folded
  lines (obs-fold) are refused (400), repeated headers are joined by ", ";
- HTTP/1.1 requires Host (400 without); the connection stays open unless
  `Connection: close` (HTTP/1.1) or no `Connection: keep-alive` (1.0);
- a request with a body (Content-Length > 0, or any Transfer-Encoding) is
  answered and then the connection closed: a GET or HEAD has no body, and
  reading one only to drop it is a way to tie a server up.

An error is a `BadRequest` carrying its status; the connection is closed
after its answer (the parser's position in the stream is lost).
"""

from __future__ import annotations

MAX_HEAD = 16 << 10
MAX_TARGET = 8 << 10
MAX_HEADERS = 100

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class BadRequest(Exception):
    """A request that cannot be answered as asked: `status` and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """One request head. `target` is the raw request target (text, latin-1);
    `headers` maps lower-case names to values; `line` is the request line
    as received, for the access log."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "line")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str],
                 keep_alive: bool, line: str) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.line = line


class RequestParser:
    """Request heads out of a byte stream (see the module's rules)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Request | None:
        buf = self.buffer
        # Blank lines before a request line are allowed (RFC 9112 2.2).
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":
            del buf[:2 if buf[:2] == b"\r\n" else 1]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            cut = end + 4
        else:
            end = buf.find(b"\n\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise BadRequest(431, "the request head is too large")
                return None
            head = bytes(buf[:end])
            cut = end + 2
        if cut > MAX_HEAD + 4:
            raise BadRequest(431, "the request head is too large")
        del buf[:cut]
        return parse_head(head)


def parse_head(head: bytes) -> Request:
    """One request head (without its empty line) as a Request."""
    lines = head.split(b"\n")
    line = lines[0].rstrip(b"\r")
    parts = line.split(b" ")
    shown = line.decode("latin-1")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "a request line is METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if not version.startswith(b"HTTP/") or len(version) != 8 or version[6:7] != b"." \
            or not version[5:6].isdigit() or not version[7:8].isdigit():
        raise BadRequest(400, "a request line ends with HTTP/1.x")
    if version[5:6] != b"1":
        raise BadRequest(505, "only HTTP/1.x is spoken here")
    if len(target) > MAX_TARGET:
        raise BadRequest(414, "the request target is too long")
    if any(c not in _TOKEN for c in method):
        raise BadRequest(400, "the method is not a token")
    if any(c <= 0x20 or c == 0x7F for c in target):
        raise BadRequest(400, "the request target holds a control character")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header fields")
    for raw in lines[1:]:
        raw = raw.rstrip(b"\r")
        if raw[:1] in (b" ", b"\t"):
            raise BadRequest(400, "folded header lines are not accepted")
        name, colon, value = raw.partition(b":")
        if not colon or not name or any(c not in _TOKEN for c in name):
            raise BadRequest(400, "a header field is NAME: VALUE")
        if b"\r" in value or b"\0" in value:
            raise BadRequest(400, "a header value holds a control character")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("host", "content-length"):
                raise BadRequest(400, f"two {key} fields")
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text
    http11 = version == b"HTTP/1.1" or version[7:8] != b"0"
    if http11 and "host" not in headers:
        raise BadRequest(400, "an HTTP/1.1 request needs a Host field")
    connection = headers.get("connection", "").lower()
    tokens = {t.strip() for t in connection.split(",")} if connection else set()
    keep_alive = ("close" not in tokens) if http11 else ("keep-alive" in tokens)
    if "transfer-encoding" in headers:
        keep_alive = False
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        if int(length):
            keep_alive = False
    return Request(method.decode("ascii"), target.decode("latin-1"),
                   "HTTP/1.1" if http11 else "HTTP/1.0", headers, keep_alive, shown)
