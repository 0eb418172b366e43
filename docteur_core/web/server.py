"""The socket shell of the web server: one selector loop, reader threads.

The loop (the calling thread) accepts connections, reads requests
(`request.RequestParser`), and answers at once every request whose entity
the site already holds (`Site.cached`): a keep-alive client asking for the
pages of a site costs no thread switch, no image read. A request whose
path was not resolved yet goes to a reader thread, each with its own
`Image` (the reader is not thread-safe; a large file being checked by one
does not hold up the others), and its answer comes back to the loop
through a socket pair. Bodies go out with `send`, and those of large files
with `os.sendfile` from the checked temporary file, never read into
memory.

A connection answers its requests in order (pipelining), one at a time;
no request of it is answered while more than OUTPUT_LIMIT bytes wait to be
sent, and it is closed if more than INPUT_LIMIT bytes of requests pile up
meanwhile. An idle keep-alive connection, a request head that does not
complete, or a client that reads nothing, is closed after IDLE seconds
(a slow download that makes progress is not idle). One access-log line per
request goes to `log` (the combined log format, control characters
escaped), written once per turn of the loop.
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, BinaryIO, TextIO

from .request import BadRequest, Request, RequestParser
from .site import (REASONS, Key, NotHere, Response, Site, http_date, split_target,
                   target_key)

if TYPE_CHECKING:
    from ..reader.image import Image

# What a connection has still to send: bytes (or the unsent end of them), or
# (file, offset, length) to send from the file.
Outgoing = bytes | memoryview | tuple[BinaryIO, int, int]

IDLE = 60.0
OUTPUT_LIMIT = 1 << 20
INPUT_LIMIT = 1 << 20
RECV = 1 << 16
SENDFILE_STEP = 1 << 22
MAX_CONNECTIONS = 1000

_LISTENER = object()
_WAKE = object()


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, :PORT or PORT as (host, port); ValueError
    saying what is wrong."""
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a port is 0-65535)")
    return host or default_host, int(port)


def _log_text(text: str) -> str:
    """A field of the access log on one line: control characters, `"` and
    `\\` as \\xHH (nginx's escaping)."""
    if all(0x20 <= ord(c) < 0x7F and c not in '"\\' for c in text):
        return text
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else f"\\x{ord(c):02X}"
                   for c in text.encode("latin-1", "replace").decode("latin-1"))


class _Connection:
    __slots__ = ("sock", "fd", "peer", "parser", "out", "pending", "busy", "closing",
                 "writing", "seen", "closed")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.parser = RequestParser()
        self.out: deque[Outgoing] = deque()
        self.pending = 0       # bytes in `out`
        self.busy = False      # a request is with a reader thread
        self.closing = False   # close once `out` is sent
        self.writing = False   # registered for EVENT_WRITE
        self.seen = time.monotonic()
        self.closed = False


class Server:
    """Serve `site` on `listen` with one reader thread per image of `images`."""

    def __init__(self, site: Site, images: list[Image], listen: tuple[str, int], *,
                 log: TextIO | None = None, access_log: bool = True) -> None:
        self.site = site
        self.images = images
        self.log = log if log is not None else sys.stderr
        self.access_log = access_log
        host, port = listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.address = sock.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # (connection, request, key, query) for a reader thread; None stops one.
        self._jobs: queue.SimpleQueue[tuple[_Connection, Request, Key, str] | None] = \
            queue.SimpleQueue()
        self._done: deque[tuple[_Connection, Request, Response]] = deque()
        self._conns: dict[int, _Connection] = {}
        self._lines: list[str] = []
        self._date_at = -1
        self._date = ""
        self._log_date = ""
        self._stopping = False
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    # -- the loop -----------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until KeyboardInterrupt (Ctrl-C, or a signal handler that
        raises it) or `stop()`."""
        for image in self.images:
            t = threading.Thread(target=self._reader, args=(image,), daemon=True,
                                 name="docteur-http-reader")
            t.start()
            self._threads.append(t)
        sel = self._sel
        sel.register(self.sock, selectors.EVENT_READ, _LISTENER)
        sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        swept = time.monotonic()
        try:
            while not self._stopping:
                for key, mask in sel.select(1.0):
                    data = key.data
                    if data is _LISTENER:
                        self._accept()
                    elif data is _WAKE:
                        self._finish_jobs()
                    else:
                        if mask & selectors.EVENT_WRITE and not data.closed:
                            self._flush(data)
                        if mask & selectors.EVENT_READ and not data.closed:
                            self._read(data)
                if self._lines:
                    self._write_log()
                now = time.monotonic()
                if now - swept > 5:
                    swept = now
                    self._sweep(now)
        finally:
            if self._lines:
                self._write_log()
            self.close()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"s")
        except OSError:
            pass

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        for _ in self._threads:
            self._jobs.put(None)
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: try again later
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Connection(sock, str(addr[0]))
            self._conns[conn.fd] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if conn.busy or conn.out:
                conn.closing = True  # answer what was asked, then close
                if not conn.out and not conn.busy:
                    self._close(conn)
            else:
                self._close(conn)
            return
        conn.seen = time.monotonic()
        conn.parser.feed(data)
        if len(conn.parser.buffer) > INPUT_LIMIT:
            # Requests piling up behind one still being answered: a client
            # that does not wait for its answers is not given memory.
            self._close(conn)
            return
        self._serve(conn)

    def _serve(self, conn: _Connection) -> None:
        """Answer the requests `conn` has received, in order, until one
        goes to a reader thread or the output is full."""
        site = self.site
        while not conn.busy and not conn.closing and conn.pending < OUTPUT_LIMIT:
            try:
                request = conn.parser.next()
            except BadRequest as exc:
                self._answer(conn, None, site.error(exc.status, exc.reason), close=True)
                return
            if request is None:
                return
            if request.method not in ("GET", "HEAD"):
                self._answer(conn, request, site.error(405, head=request.method == "HEAD"))
                continue
            try:
                path, query = split_target(request.target)
                key = target_key(path)
            except NotHere as exc:
                self._answer(conn, request,
                             site.error(exc.status, str(exc), request.method == "HEAD"))
                continue
            entity = site.cached(key)
            if entity is None:
                conn.busy = True
                self._jobs.put((conn, request, key, query))
                return
            self._answer(conn, request, site.respond(request, entity, query))

    def _reader(self, image: Image) -> None:
        """A reader thread: resolve what the loop hands over, with `image`."""
        site = self.site
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, request, key, query = job
            try:
                response = site.respond(request, site.resolve(image, key), query)
            except Exception as exc:  # never a thread dead with a client waiting
                response = site.error(500, f"{type(exc).__name__}: {exc}",
                                      request.method == "HEAD")
            self._done.append((conn, request, response))
            try:
                self._wake_w.send(b"j")
            except (BlockingIOError, InterruptedError):
                pass  # the pipe is full of wake-ups already
            except OSError:
                return  # closed: the server is stopping

    def _finish_jobs(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            conn, request, response = self._done.popleft()
            conn.busy = False
            if conn.closed:
                continue
            self._answer(conn, request, response)
            if not conn.closed:
                self._serve(conn)

    # -- responses ----------------------------------------------------------

    def _dates(self) -> None:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = http_date(now)
            t = time.gmtime(now)
            months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                      "Nov", "Dec")
            self._log_date = (f"{t.tm_mday:02d}/{months[t.tm_mon - 1]}/{t.tm_year}:"
                              f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")

    def _answer(self, conn: _Connection, request: Request | None, response: Response,
                close: bool = False) -> None:
        """Queue a response's head and body on `conn`, log it, send what can be."""
        self._dates()
        keep = not close and request is not None and request.keep_alive
        lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\n"
                 f"Server: docteur\r\nDate: {self._date}\r\n"]
        for name, value in response.headers:
            lines.append(f"{name}: {value}\r\n")
        if not keep:
            lines.append("Connection: close\r\n")
        elif request is not None and request.version == "HTTP/1.0":  # (keep: one is)
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        segments = response.segments
        out = conn.out
        if segments and type(segments[0]) is bytes and len(segments[0]) <= 1 << 16:
            out.append(head + segments[0])
            rest = segments[1:]
        else:
            out.append(head)
            rest = segments
        out.extend(rest)
        conn.pending += len(head) + (response.length if segments else 0)
        if not keep:
            conn.closing = True
        if self.access_log:
            self._log_request(conn, request, response)
        self._flush(conn, more=False)

    def _log_request(self, conn: _Connection, request: Request | None,
                     response: Response) -> None:
        if request is None:
            line, referer, agent = "-", "-", "-"
        else:
            h = request.headers
            line = request.line
            referer = h.get("referer", "-")
            agent = h.get("user-agent", "-")
        sent = response.length if response.segments else 0
        note = f' "{_log_text(response.note)}"' if response.note else ""
        self._lines.append(f'{conn.peer} - - [{self._log_date}] "{_log_text(line)}" '
                           f'{response.status} {sent} "{_log_text(referer)}" '
                           f'"{_log_text(agent)}"{note}\n')

    def _write_log(self) -> None:
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.log.write(text)
            self.log.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr does not stop the site

    def _flush(self, conn: _Connection, more: bool = True) -> None:
        """Send what `conn` has queued, as far as the socket takes it; then,
        with `more`, answer the requests it has sent since."""
        out = conn.out
        sock = conn.sock
        before = conn.pending
        try:
            while out:
                seg = out[0]
                if isinstance(seg, tuple):
                    f, offset, length = seg
                    n = os.sendfile(conn.fd, f.fileno(), offset, min(length, SENDFILE_STEP))
                    if n == 0:  # the file is shorter than it was: cannot be, but never spin
                        raise OSError(errno.EIO, "short spool")
                    conn.pending -= n
                    if n < length:
                        out[0] = (f, offset + n, length - n)
                        continue
                else:
                    n = sock.send(seg)
                    conn.pending -= n
                    if n < len(seg):
                        out[0] = memoryview(seg)[n:]
                        continue
                out.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.pending != before:  # a slow download is not an idle connection
            conn.seen = time.monotonic()
        if out:
            if not conn.writing:
                conn.writing = True
                self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        conn.pending = 0
        conn.seen = time.monotonic()
        if conn.writing:
            conn.writing = False
            self._sel.modify(sock, selectors.EVENT_READ, conn)
        if conn.closing:
            if not conn.busy:
                self._close(conn)
            return
        if more and conn.parser.buffer and not conn.busy:
            self._serve(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.out.clear()
        self._conns.pop(conn.fd, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _sweep(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if not conn.busy and now - conn.seen > IDLE:
                self._close(conn)
