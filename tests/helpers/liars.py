"""Lying servers for the tests: an NBD server and an HTTP(S) origin on
loopback that serve whatever image bytes a `Policy` says, to show that no
reader takes the wrong bytes for the right ones (issue 21).

Both are real network servers (sockets on 127.0.0.1, a thread per
connection), written here so that they can lie in ways nbdkit and nginx
never do; everything that is not a lie follows the protocol, so any client
works with them: docteur's readers, `curl`, libnbd's `nbdinfo`/`nbdcopy`,
QEMU. The listening socket is bound before the context manager returns, so
a client may connect at once: there is nothing to wait for, and no sleep.

    from tests.helpers.liars import LyingHttp, LyingNbd, Policy

    policy = Policy.always(image_b)             # another image, every read
    policy = Policy.switch(image_a, image_b, after=3)   # A for 3 reads, then B
    policy = Policy.always(image_a)             # honest: the liars' own sanity

    with LyingNbd(policy) as uri:               # "nbd://127.0.0.1:PORT/"
        subprocess.run(["docteur", "cat", uri, "README"])

    with LyingHttp(policy) as url:              # "http://127.0.0.1:PORT/image.img"
        ...
    liar = LyingHttp(policy, tls=True)          # https, with a throwaway CA:
    with liar as url:                           # "https://127.0.0.1:PORT/image.img"
        subprocess.run([...], env={**os.environ, **liar.env})   # SSL_CERT_FILE=CA
    with LyingHttp(policy, tls=True, redirects=("http",)) as url:   # https -> http
    with LyingHttp(policy, validators="none") as url:   # no ETag, no Last-Modified

Images are `bytes` or paths (read once). A *read* is one NBD_CMD_READ, or
one HTTP GET (HEAD is not a read); reads are counted over the whole server
(all connections) unless `Policy(..., per_connection=True)`, where each new
connection (NBD) or TCP connection (HTTP) starts again at the first image.
`policy.reads` is the count so far. Mind the readers' own read sizes: the
HTTP reader fetches 64 KiB per miss (a small image in one GET: set
DOCTEUR_HTTP_CHUNK=512 in its environment, or pass `chunk=` to HttpDevice,
for a switch to land mid-image); the NBD reader reads in the server's
preferred block size (4096 here).

The size an NBD client is told is that of the image current at its
handshake; a later image shorter than it is read as zeros past its end (a
lie kept consistent). An HTTP answer always gives the current image's size.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import http.server
import os
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

__all__ = ["Policy", "LyingNbd", "LyingHttp", "tls_files", "TlsFiles"]


# -- what is served --------------------------------------------------------------------

Image = "bytes | os.PathLike | str"  # an image's bytes, or the path of a file holding them


class Policy:
    """Which image's bytes answer each read: `first` for the first `after`
    reads, then `then` (or `first` for ever when `then` is None).
    Thread-safe; `reads` counts the reads answered so far."""

    def __init__(self, first: Image, then: Image | None = None, after: int = 0, *,
                 per_connection: bool = False) -> None:
        self.images = [_bytes_of(first)] + ([_bytes_of(then)] if then is not None else [])
        self.after = after if then is not None else 0
        self.per_connection = per_connection
        self.reads = 0
        self._lock = threading.Lock()

    @classmethod
    def always(cls, image: Image) -> "Policy":
        """The same image for every read (another valid image: a plain lie;
        the right one: an honest server)."""
        return cls(image)

    @classmethod
    def switch(cls, first: Image, then: Image, after: int, *,
               per_connection: bool = False) -> "Policy":
        """`first` for the first `after` reads, `then` from then on (a
        switch mid-session)."""
        return cls(first, then, after, per_connection=per_connection)

    def index(self, reads: int | None = None) -> int:
        """Which image (0 or 1) answers after `reads` reads (default: now)."""
        n = self.reads if reads is None else reads
        return 1 if len(self.images) > 1 and n >= self.after else 0

    def current(self) -> bytes:
        """The image the next read would get, without counting a read
        (an NBD handshake's size, an HTTP HEAD)."""
        with self._lock:
            return self.images[self.index()]

    def take(self) -> bytes:
        """The image that answers this read; counts it."""
        with self._lock:
            image = self.images[self.index()]
            self.reads += 1
            return image

    def for_connection(self) -> "Policy":
        """What a new connection reads through: this policy, or with
        `per_connection` a fresh copy of it (its count at 0)."""
        if not self.per_connection:
            return self
        fresh = copy.copy(self)
        fresh.reads = 0
        fresh._lock = threading.Lock()
        return fresh


def _bytes_of(image) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).read_bytes()


def _slice(image: bytes, offset: int, length: int) -> bytes:
    """image[offset:offset+length], padded with zeros past its end."""
    data = image[offset:offset + length]
    return data + bytes(length - len(data))


# -- a throwaway CA ------------------------------------------------------------------


class TlsFiles:
    """PEM files of a test CA and of a server certificate it signed, for
    127.0.0.1 and localhost: `ca` is what a client trusts (SSL_CERT_FILE for
    docteur's reader, which uses ssl.create_default_context(); `curl
    --cacert`), `cert` and `key` what the server presents."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"


_tls: TlsFiles | None = None
_tls_lock = threading.Lock()


def tls_files() -> TlsFiles:
    """The process's test CA and server certificate, made once with the
    `openssl` command (P-256 keys: fast) in a temporary folder removed at
    exit."""
    global _tls
    with _tls_lock:
        if _tls is not None:
            return _tls
        tmp = tempfile.mkdtemp(prefix="docteur-liar-tls-")
        atexit.register(shutil.rmtree, tmp, True)
        folder = Path(tmp)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

        openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=docteur test CA (throwaway)",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", "ca.key", "-out", "ca.pem")
        openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1",
                "-keyout", "server.key", "-out", "server.csr")
        (folder / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
        _tls = TlsFiles(folder)
        return _tls


# -- shared server plumbing ----------------------------------------------------------


class _Server:
    """A socketserver in a thread, its open connections tracked so that
    `stop` ends them too (a keep-alive client would hold a thread)."""

    def _start(self, server: socketserver.BaseServer) -> None:
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # a client gone: not news
        self._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True, name=f"{type(self).__name__}-serve")
        thread.start()
        self._threads.append(thread)

    def _track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def _init_plumbing(self) -> None:
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(10)
        self._servers, self._threads = [], []


# -- NBD -----------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_CAN_MULTI_CONN = 1, 2, 1 << 8
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_INVALID = (1 << 31) | 1, (1 << 31) | 3
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
EPERM, EIO, EINVAL = 1, 5, 22
MAX_OPTION_DATA = 64 << 10


class LyingNbd(_Server):
    """A fixed-newstyle NBD server (read-only, simple replies) serving
    `policy`'s bytes on 127.0.0.1 (or on the Unix socket `unix`).

    Handshake: NBD_OPT_GO and NBD_OPT_INFO (with NBD_INFO_EXPORT, the block
    sizes `block_sizes` when asked, `description` if given), the old
    NBD_OPT_EXPORT_NAME, NBD_OPT_LIST (one export, "") and NBD_OPT_ABORT;
    every other option is NBD_REP_ERR_UNSUP (structured replies, meta
    contexts, extended headers: clients fall back). Any export name is
    accepted. Transmission: NBD_CMD_READ (EINVAL past the end), NBD_CMD_DISC;
    a write is EPERM, anything else EINVAL.

    `with LyingNbd(policy) as uri:` gives the NBD URI; `connections` counts
    the handshakes done.
    """

    def __init__(self, policy: Policy, *, unix: str | os.PathLike | None = None,
                 description: str | None = None,
                 block_sizes: tuple[int, int, int] = (512, 4096, 32 << 20)) -> None:
        self.policy = policy
        self.unix = Path(unix) if unix is not None else None
        self.description = description
        self.block_sizes = block_sizes
        self.connections = 0
        self.uri = ""
        self._init_plumbing()

    def __enter__(self) -> str:
        liar = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                liar._track(self.request)
                try:
                    liar._session(self.request)
                except (OSError, _Hangup):
                    pass
                finally:
                    liar._untrack(self.request)

        if self.unix is not None:
            server = socketserver.ThreadingUnixStreamServer(str(self.unix), Handler)
            self.uri = f"nbd+unix:///?socket={self.unix}"
        else:
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
            self.uri = f"nbd://127.0.0.1:{server.server_address[1]}/"
        self._start(server)
        return self.uri

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.unix is not None:
            self.unix.unlink(missing_ok=True)

    # -- one connection --

    def _session(self, conn: socket.socket) -> None:
        policy = self.policy.for_connection()
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(conn, 4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", _recv(conn, 16))
            if magic != IHAVEOPT or length > MAX_OPTION_DATA:
                return
            data = _recv(conn, length)
            if option == OPT_EXPORT_NAME:
                size = len(policy.current())
                conn.sendall(struct.pack(">QH", size, FLAG_HAS_FLAGS | FLAG_READ_ONLY)
                             + (b"" if no_zeroes else bytes(124)))
                break
            if option == OPT_ABORT:
                self._reply(conn, option, REP_ACK)
                return
            if option == OPT_LIST:
                self._reply(conn, option, REP_SERVER, struct.pack(">I", 0))
                self._reply(conn, option, REP_ACK)
                continue
            if option in (OPT_INFO, OPT_GO):
                requests = self._info_requests(data)
                if requests is None:
                    self._reply(conn, option, REP_ERR_INVALID)
                    continue
                size = len(policy.current())
                self._reply(conn, option, REP_INFO,
                            struct.pack(">HQH", INFO_EXPORT, size, FLAG_HAS_FLAGS | FLAG_READ_ONLY))
                if INFO_BLOCK_SIZE in requests:
                    self._reply(conn, option, REP_INFO,
                                struct.pack(">HIII", INFO_BLOCK_SIZE, *self.block_sizes))
                if self.description is not None:
                    self._reply(conn, option, REP_INFO, struct.pack(">H", INFO_DESCRIPTION)
                                + self.description.encode())
                self._reply(conn, option, REP_ACK)
                if option == OPT_GO:
                    break
                continue
            self._reply(conn, option, REP_ERR_UNSUP)
        with self._conns_lock:
            self.connections += 1
        self._transmission(conn, policy, size)

    @staticmethod
    def _info_requests(data: bytes) -> list[int] | None:
        if len(data) < 6:
            return None
        (n,) = struct.unpack_from(">I", data)
        if 4 + n + 2 > len(data):
            return None
        (count,) = struct.unpack_from(">H", data, 4 + n)
        rest = data[4 + n + 2:]
        if len(rest) != 2 * count:
            return None
        return list(struct.unpack(f">{count}H", rest))

    @staticmethod
    def _reply(conn: socket.socket, option: int, kind: int, data: bytes = b"") -> None:
        conn.sendall(struct.pack(">QIII", OPTION_REPLY_MAGIC, option, kind, len(data)) + data)

    @staticmethod
    def _transmission(conn: socket.socket, policy: Policy, size: int) -> None:
        while True:
            magic, _flags, kind, cookie, offset, length = struct.unpack(">IHHQQI",
                                                                        _recv(conn, 28))
            if magic != REQUEST_MAGIC:
                return
            if kind == CMD_DISC:
                return
            if kind == CMD_READ:
                if offset + length > size:
                    conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, cookie))
                    continue
                data = _slice(policy.take(), offset, length)
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie) + data)
                continue
            if kind == CMD_WRITE:
                _recv(conn, length)
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EPERM, cookie))
                continue
            conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, cookie))


class _Hangup(Exception):
    """The client closed the connection."""


def _recv(conn: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        piece = conn.recv(min(n - got, 1 << 20))
        if not piece:
            raise _Hangup()
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


# -- HTTP ----------------------------------------------------------------------------

VALIDATOR_MODES = ("kept", "honest", "etag", "last-modified", "none")
KEPT_ETAG = '"docteur-liar"'
KEPT_DATE = "Thu, 01 Jan 2026 00:00:00 GMT"
_HOP = "/_liar/"


class LyingHttp(_Server):
    """An HTTP/1.1 origin (keep-alive, Range, HEAD) serving `policy`'s bytes
    at every path on 127.0.0.1; `with LyingHttp(policy) as url:` gives
    `http(s)://127.0.0.1:PORT/<name>`.

    - `tls`: the URL is https (a certificate from `tls_files()`: set
      `SSL_CERT_FILE` to `ca_file`, i.e. `env`, for docteur's reader).
    - `validators`: what identifies the object:
        "kept"          one ETag and one Last-Modified for every image (the
                        lie: a switch keeps them), the default;
        "honest"        an ETag (of the image's SHA-1) and a Last-Modified
                        per image, so a switch changes them;
        "etag", "last-modified"   only that one, kept;
        "none"          neither header.
      `If-Match` and `If-Unmodified-Since` are honoured against the served
      image's own validators when it has them (412 otherwise), as an honest
      origin does: only "honest" can ever fail them.
    - `redirects`: the schemes a request goes through before it is served,
      one redirect (`redirect_status`) each: ("http",) on a tls liar is an
      https -> http downgrade, ("https", "http") a downgrade at the second
      hop, ("https",) a harmless https -> https hop. The liar listens on
      both schemes as needed; the path carries the hops left.
    - `redirect_after`: requests to the URL answered directly before the
      redirects begin (a redirect met on a later read).

    `requests` lists (scheme, method, path, Range, status) per request.
    Every answer is `Accept-Ranges: bytes`; a Range is one `a-b`, `a-` or
    `-n` span (206), no Range the whole image (200), a span starting past
    the end 416.
    """

    def __init__(self, policy: Policy, *, tls: bool = False, validators: str = "kept",
                 redirects: Sequence[str] = (), redirect_after: int = 0,
                 redirect_status: int = 302, name: str = "image.img") -> None:
        if validators not in VALIDATOR_MODES:
            raise ValueError(f"validators={validators!r}: one of {VALIDATOR_MODES}")
        if any(s not in ("http", "https") for s in redirects):
            raise ValueError(f"redirects={redirects!r}: schemes http or https")
        self.policy = policy
        self.tls = tls
        self.validators = validators
        self.redirects = tuple(redirects)
        self.redirect_after = redirect_after
        self.redirect_status = redirect_status
        self.name = name.lstrip("/")
        self.requests: list[tuple[str, str, str, str, int]] = []
        self.ports: dict[str, int] = {}
        self.url = ""
        self._entries = 0
        self._lock = threading.Lock()
        self._init_plumbing()

    @property
    def ca_file(self) -> Path:
        return tls_files().ca

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to trust this liar's certificate."""
        return {"SSL_CERT_FILE": str(self.ca_file)} if "https" in self.ports else {}

    def url_for(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.ports[scheme]}{path}"

    def __enter__(self) -> str:
        schemes = {"https" if self.tls else "http", *self.redirects}
        context = None
        if "https" in schemes:
            files = tls_files()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(files.cert, files.key)
        for scheme in sorted(schemes):
            server = _HttpServer(("127.0.0.1", 0), _handler_for(self, scheme),
                                 context if scheme == "https" else None)
            self.ports[scheme] = server.server_address[1]
            self._start(server)
        self.url = self.url_for("https" if self.tls else "http", "/" + self.name)
        return self.url

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answers --

    def _validators(self, image: bytes) -> dict[str, str]:
        mode = self.validators
        out = {}
        if mode == "honest":
            out["ETag"] = '"' + hashlib.sha1(image).hexdigest()[:20] + '"'
            k = self.policy.images.index(image) if image in self.policy.images else 0
            out["Last-Modified"] = f"Thu, 01 Jan 2026 0{k % 10}:00:00 GMT"
        if mode in ("kept", "etag"):
            out["ETag"] = KEPT_ETAG
        if mode in ("kept", "last-modified"):
            out["Last-Modified"] = KEPT_DATE
        return out

    def _next_hop(self, path: str) -> tuple[str | None, str]:
        """(scheme to redirect to, or None to serve; the path to give it)."""
        if path.startswith(_HOP):
            hops, _, rest = path[len(_HOP):].partition("/")
            left = [] if hops == "-" else hops.split(",")
            rest = "/" + rest
        else:
            with self._lock:
                self._entries += 1
                entry = self._entries
            left = list(self.redirects) if entry > self.redirect_after else []
            rest = path
        if not left:
            return None, rest
        scheme, more = left[0], left[1:]
        return scheme, f"{_HOP}{','.join(more) or '-'}{rest}"

    def _log(self, *record) -> None:
        with self._lock:
            self.requests.append(record)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext | None) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        # the TLS handshake in the connection's own thread, not the accept loop's
        if self.context is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        request.settimeout(30)
        wrapped = self.context.wrap_socket(request, server_side=True)
        try:
            self.RequestHandlerClass(wrapped, client_address, self)
        finally:
            wrapped.close()


def _handler_for(liar: LyingHttp, scheme: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "docteur-liar"
        timeout = 60  # a stuck client does not hold a thread for ever

        def setup(self) -> None:
            super().setup()
            liar._track(self.connection)
            self.policy = liar.policy.for_connection()

        def finish(self) -> None:
            liar._untrack(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"",
                  send_body: bool = True) -> None:
            liar._log(scheme, self.command, self.path, self.headers.get("Range", "-"), status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def _answer(self, body: bool) -> None:
            to, path = liar._next_hop(self.path)
            if to is not None:
                self._send(liar.redirect_status, {"Location": liar.url_for(to, path),
                                                  "Content-Length": "0"})
                return
            image = self.policy.take() if body else self.policy.current()
            size = len(image)
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                       **liar._validators(image)}
            etag, date = headers.get("ETag"), headers.get("Last-Modified")
            match = self.headers.get("If-Match")
            since = self.headers.get("If-Unmodified-Since")
            if (match and etag and match.strip() not in ("*", etag)) or \
                    (since and date and since.strip() != date):
                self._send(412, {"Content-Length": "0"})
                return
            span = _range(self.headers.get("Range"), size)
            if span is None:
                self._send(200, {**headers, "Content-Length": str(size)}, image, body)
            elif span == ():
                self._send(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            else:
                a, b = span
                headers.update({"Content-Range": f"bytes {a}-{b - 1}/{size}",
                                "Content-Length": str(b - a)})
                self._send(206, headers, image[a:b], body)

    return Handler


def _range(value: str | None, size: int) -> tuple[int, int] | tuple[()] | None:
    """[a, b) of a single-span Range header; () if unsatisfiable; None if
    absent or not understood (the whole object, as RFC 9110 allows)."""
    if not value or not value.strip().lower().startswith("bytes="):
        return None
    spec = value.strip()[6:]
    if "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size else ()
        a = int(first)
        b = int(last) + 1 if last else size
    except ValueError:
        return None
    if a >= size or b <= a:
        return ()
    return a, min(b, size)
