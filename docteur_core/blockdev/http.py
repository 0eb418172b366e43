"""An image on an HTTP(S) origin, read with range requests: a BlockDevice.

`docteur ls https://bucket.example/COMMIT.img /` and `Image.open(url)` read
only the bytes they need: each miss fetches at least `chunk` bytes (64 KiB
by default, $DOCTEUR_HTTP_CHUNK; the bounded read-ahead) and keeps the last `keep_bytes` (4 MiB)
of chunks, behind the usual sector cache. What a response means is decided
in `http_range.py` (pure); this module only talks to the socket.

- The first request (bytes 0 .. chunk-1, which hold the header) pins the
  object's size and validator; every later one sends them back (`If-Match`
  or `If-Unmodified-Since`) and checks the answer, so a replaced object
  is one line (`OriginChanged`), never a mix of two images.
- Redirects are followed (at most MAX_REDIRECTS per request) and the place
  they lead to is reused for later reads; the validator stays pinned. A
  redirect from https to plain http is refused, at any hop of any request.
- An origin that sends neither ETag nor Last-Modified is refused unless the
  caller pinned the commit (`pinned=True`: it then checks every byte against
  that commit, the only thing left that can tell two images apart).
- One keep-alive connection per origin; a connection the server closed
  between requests is reopened once.
- Timeouts: `connect_timeout` (default 10 s, $DOCTEUR_HTTP_CONNECT_TIMEOUT)
  to connect, `read_timeout` (default 30 s, $DOCTEUR_HTTP_READ_TIMEOUT) for
  every wait on the socket, and `request_timeout` (default 120 s,
  $DOCTEUR_HTTP_REQUEST_TIMEOUT) for a whole request, from connecting to
  its body's last byte. A silent origin is an error after the first; one
  that trickles a byte per wait (never silent for long) after the second.
  A large read is cut into requests of at most 8 MiB (`request_spans`), so
  that deadline bounds a rate, not a file's size.

Standard library only (http.client, ssl, urllib.parse), imported only when
a URL is opened: a guest reading a disk never loads them.
"""

from __future__ import annotations

import _thread
import http.client
import io
import os
import socket
import time
from collections import OrderedDict

TYPE_CHECKING = False  # (`typing` is for checkers only here)
if TYPE_CHECKING:
    from typing import Any

from .block import DEFAULT_BLOCK_SIZE, _DeviceBase, check_aligned, check_block_size, clip
from .http_range import (MAX_REDIRECTS, Partial, Redirect, RemoteError, Target, Validator,
                         fetch_span, judge, parse_url, request_headers, request_spans,
                         require_validator)

DEFAULT_CHUNK = 64 << 10
DEFAULT_KEEP_BYTES = 4 << 20
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 120.0
USER_AGENT = "docteur-reader"
# Bytes read from the socket at a time: a body is read in pieces so that a
# short one is reported with what did arrive.
_PIECE = 1 << 20


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise RemoteError(f"${name}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise RemoteError(f"${name} must be positive, not {text!r}")
    return value


def _env_chunk() -> int:
    """$DOCTEUR_HTTP_CHUNK (bytes, a power of two from 512 to 16 MiB), else
    DEFAULT_CHUNK: smaller wastes fewer bytes per miss, larger pays fewer
    round trips to a distant origin."""
    text = os.environ.get("DOCTEUR_HTTP_CHUNK")
    if not text:
        return DEFAULT_CHUNK
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 512 or value > 16 << 20 or value & (value - 1):
        raise RemoteError(f"$DOCTEUR_HTTP_CHUNK={text!r} is not a power of two "
                          "from 512 to 16777216")
    return value


class HttpDevice(_DeviceBase):
    """bytes of an object on an HTTP origin, fetched lazily by ranges.

    `block_size` is the block size the reader sees (512 by default: the
    origin has none); `chunk` the least fetched per miss (a power of two,
    a multiple of `block_size`); `keep_bytes` bounds the chunks kept.
    `requests` and `bytes_fetched` count what went over the network.
    `pinned`: the caller checks what it reads against a commit it was given
    (--commit ID), so an origin without ETag or Last-Modified may be read;
    without it such an origin is `NoValidator`, one line.
    """

    def __init__(self, url: str, block_size: int | None = None, *,
                 chunk: int | None = None, keep_bytes: int = DEFAULT_KEEP_BYTES,
                 connect_timeout: float | None = None,
                 read_timeout: float | None = None,
                 request_timeout: float | None = None,
                 pinned: bool = False) -> None:
        self.url = url
        self.pinned = pinned
        self._target: Target = parse_url(url)
        self.block_size = check_block_size(block_size if block_size is not None
                                           else DEFAULT_BLOCK_SIZE)
        if chunk is None:
            chunk = _env_chunk()
        self.chunk = max(check_block_size(chunk), self.block_size)
        self.max_chunks = max(2, keep_bytes // self.chunk)
        self.connect_timeout = connect_timeout or _env_seconds(
            "DOCTEUR_HTTP_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
        self.read_timeout = read_timeout or _env_seconds(
            "DOCTEUR_HTTP_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)
        self.request_timeout = request_timeout or _env_seconds(
            "DOCTEUR_HTTP_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)
        # None once closed
        self._conns: dict[tuple[str, str, int], http.client.HTTPConnection] | None = {}
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = _thread.allocate_lock()
        self.requests = 0
        self.bytes_fetched = 0
        self.validator: Validator | None = None
        self.capacity = 0
        self._size: int | None = None
        try:
            first = self._get(0, self.chunk)  # pins the size and the validator
        except BaseException:
            self.close()
            raise
        self._store(0, first)

    # -- the block interface ----------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        check_aligned(offset, length, self.block_size)
        n = clip(offset, length, self.capacity)
        if n == 0:
            return b""
        with self._lock:
            if self._conns is None:
                raise RemoteError(f"{self._target.display}: read after close")
            chunk = self.chunk
            first, last = offset // chunk, (offset + n - 1) // chunk
            count = last - first + 1
            if count > self.max_chunks // 4:
                # the bulk of a large object: fetched as asked, not kept, so it
                # does not push out the IDX and the trees
                return b"".join(self._get(start, end)
                                for start, end in request_spans(offset, offset + n))
            pieces = []
            k = first
            while k <= last:
                data = self._chunks.get(k)
                if data is not None:
                    self._chunks.move_to_end(k)
                    pieces.append(data)
                    k += 1
                    continue
                j = k + 1
                while j <= last and j not in self._chunks:
                    j += 1
                start, end = fetch_span(k * chunk, (j - k) * chunk, self.capacity, chunk)
                data = self._get(start, end)
                self._store(start, data)
                pieces.append(data)
                k = j
            data = b"".join(pieces)
            skip = offset - first * chunk
            return data[skip:skip + n]

    def close(self) -> None:
        conns, self._conns = self._conns, None
        for conn in (conns or {}).values():
            conn.close()
        self._chunks.clear()

    def __repr__(self) -> str:
        return f"HttpDevice({self._target.display!r}, {self.capacity} bytes)"

    # -- internals --------------------------------------------------------

    def _store(self, start: int, data: bytes) -> None:
        chunk = self.chunk
        chunks = self._chunks
        for k in range(0, len(data), chunk):
            chunks[(start + k) // chunk] = data[k:k + chunk]
        while len(chunks) > self.max_chunks:
            chunks.popitem(last=False)

    def _get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the pinned object (fewer only at its end),
        following redirects; the first call pins size and validator."""
        target = self._target
        for _hop in range(MAX_REDIRECTS + 1):
            status, reason, headers, response = self._request(target, start, end)
            try:
                verdict = judge(target.url, status, reason, headers, start, end,
                                self.validator, self._size)
            except BaseException:
                self._drop(target, response)
                raise
            if isinstance(verdict, Redirect):
                self._drop(target, response, keep=True)
                target = parse_url(verdict.url)
                continue
            assert isinstance(verdict, Partial)
            if self._size is None:
                try:
                    require_validator(target.url, verdict.validator, self.pinned)
                except BaseException:
                    self._drop(target, response)
                    raise
            data = self._body(target, response, verdict.end - verdict.start)
            if self._size is None:
                self._size = self.capacity = verdict.total
                self.validator = verdict.validator
            self._target = target  # later reads go straight where this one landed
            self.bytes_fetched += len(data)
            return data
        raise RemoteError(f"{self._target.display}: more than {MAX_REDIRECTS} redirects "
                          "(a redirect loop?)")

    def _connection(self, target: Target) -> http.client.HTTPConnection:
        key = (target.scheme, target.host, target.port)
        conns = self._conns
        if conns is None:  # closed by another thread while this one read
            raise RemoteError(f"{target.display}: read after close")
        conn = conns.get(key)
        if conn is None:
            if target.scheme == "https":
                import ssl

                conn = http.client.HTTPSConnection(target.host, target.port,
                                                   timeout=self.connect_timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(target.host, target.port,
                                                  timeout=self.connect_timeout)
            conns[key] = conn
        return conn

    def _request(self, target: Target, start: int, end: int
                 ) -> tuple[int, str, dict[str, str], http.client.HTTPResponse]:
        """(status, reason, lower-cased headers, response) of one range GET,
        on the kept connection, reopened once if the server had closed it."""
        headers = request_headers(start, end, self.validator)
        headers["User-Agent"] = USER_AGENT
        where = f"{target.display}"
        deadline = time.monotonic() + self.request_timeout
        for attempt in (0, 1):
            conn = self._connection(target)
            fresh = conn.sock is None
            connected = not fresh
            try:
                if fresh:
                    conn.connect()
                    conn.sock = _DeadlineSocket(conn.sock, self.read_timeout)
                    connected = True
                sock = conn.sock
                assert isinstance(sock, _DeadlineSocket)  # as every connect above wraps it
                sock.deadline = deadline
                self.requests += 1
                conn.request("GET", target.target, headers=headers)
                response = conn.getresponse()
            except _Overdue:
                self._drop(target, None)
                raise RemoteError(f"{where}: the origin did not send the headers for bytes "
                                  f"{start}-{end - 1} within {self.request_timeout:g} s "
                                  "($DOCTEUR_HTTP_REQUEST_TIMEOUT)") from None
            except socket.timeout:
                self._drop(target, None)
                what = "answer" if connected else "connect"
                limit = self.connect_timeout if what == "connect" else self.read_timeout
                raise RemoteError(f"{where}: the origin did not {what} within {limit:g} s "
                                  f"(bytes {start}-{end - 1})") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(target, None)
                if fresh or attempt:
                    raise RemoteError(f"{where}: the origin closed the connection "
                                      f"without an answer ({exc})") from None
                continue  # a kept-alive connection the server had closed
            except ssl_errors() as exc:
                self._drop(target, None)
                raise RemoteError(f"{where}: TLS failed: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(target, None)
                text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise RemoteError(f"{where}: cannot reach {target.host} port "
                                  f"{target.port}: {text}") from None
            headers_in = {k.lower(): v for k, v in response.getheaders()}
            return response.status, response.reason, headers_in, response
        raise AssertionError("unreachable")

    def _body(self, target: Target, response: http.client.HTTPResponse, expected: int) -> bytes:
        where = target.display
        parts = []
        got = 0
        try:
            while got < expected:
                piece = response.read1(min(_PIECE, expected - got))
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
        except http.client.IncompleteRead as exc:
            got += len(exc.partial)
        except _Overdue:
            self._drop(target, response)
            raise RemoteError(f"{where}: the origin sent only {got} of {expected} bytes "
                              f"in {self.request_timeout:g} s, the limit for one request "
                              "($DOCTEUR_HTTP_REQUEST_TIMEOUT)") from None
        except socket.timeout:
            self._drop(target, response)
            raise RemoteError(f"{where}: the origin stopped sending for "
                              f"{self.read_timeout:g} s ({got} of {expected} bytes)") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop(target, response)
            raise RemoteError(f"{where}: the connection failed after {got} of {expected} "
                              f"bytes: {exc}") from None
        if got < expected:
            self._drop(target, response)
            raise RemoteError(f"{where}: short body: the origin sent {got} of "
                              f"{expected} bytes")
        response.read()  # b"": marks the response done, so the connection is reused
        if response.will_close:
            self._drop(target, response)
        return b"".join(parts)

    def _drop(self, target: Target, response: http.client.HTTPResponse | None,
              keep: bool = False) -> None:
        """Forget a response; `keep` reuses the connection if its (small)
        body can be read off, else it is closed."""
        key = (target.scheme, target.host, target.port)
        if keep and response is not None and not response.will_close:
            try:
                length = int(response.getheader("content-length") or -1)
                if 0 <= length <= 65536:
                    response.read()
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
        conns = self._conns or {}
        conn = conns.pop(key, None)
        if conn is not None:
            conn.close()


class _Overdue(TimeoutError):
    """A request's deadline passed while its answer was still arriving."""


class _DeadlineSocket:
    """A connected socket whose reads stop at `deadline` (time.monotonic()),
    set per request: the socket timeout bounds one wait, this bounds the sum
    of them, so a trickling origin cannot hold a read for ever. http.client
    reads a response (headers and body) only through `makefile`'s file, which
    reads through `recv_into` here; everything else goes to the socket."""

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        self._sock = sock
        self.read_timeout = read_timeout
        self.deadline = float("inf")
        self._timeout = -1.0
        sock.settimeout(read_timeout)

    def __getattr__(self, name: str) -> Any:  # (whatever the socket has)
        return getattr(self._sock, name)

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        # what socket.makefile("rb") does (its reference keeps the socket open
        # while a response is read after http.client closed the connection),
        # with the reads coming through recv_into below
        # (a private counter of socket.socket, which its own makefile keeps)
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        # (this object stands for the socket: SocketIO reads through recv_into)
        return io.BufferedReader(socket.SocketIO(self, "rb"),  # type: ignore[arg-type]
                                 buffering if buffering and buffering > 0
                                 else io.DEFAULT_BUFFER_SIZE)

    def recv_into(self, buffer: memoryview | bytearray, *args: int) -> int:
        # *args as given: ssl's recv_into reads nothing when told nbytes=0
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Overdue()
        timeout = min(self.read_timeout, left)
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout
        try:
            return self._sock.recv_into(buffer, *args)
        except socket.timeout:
            if timeout < self.read_timeout:
                raise _Overdue() from None
            raise


def ssl_errors() -> tuple[type[BaseException], ...]:
    """ssl.SSLError if ssl is loaded (it is for https), else nothing."""
    import sys

    ssl = sys.modules.get("ssl")
    return (ssl.SSLError, ssl.CertificateError) if ssl is not None else ()
