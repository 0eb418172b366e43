"""An NBD client: asyncio I/O around `nbd_protocol`, and a synchronous device.

- `parse_nbd_uri`: `nbd://host[:port]/export` and
  `nbd+unix:///export?socket=PATH` (port 10809 and the empty export name by
  default), as in the NBD URI specification.
- `AsyncNbdClient`: one connection; reads are pipelined (many requests in
  flight, replies matched by cookie, in any order).
- `NbdDevice`: the `BlockDevice` the reader uses. It owns a private event
  loop that runs only inside its calls, in the caller's thread: no helper
  thread, no cross-thread hand-off per read.

Every failure (refused connection, unknown export, server gone mid-read,
malformed reply, timeout) is an `NbdError` (a `DocteurError`) whose one-line
message names the server and the export.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .block import check_aligned, check_block_size, clip
from .nbd_protocol import (
    DEFAULT_PORT, ClientHandshake, ExportInfo, NbdError, NbdExportNotFound, NbdProtocolError,
    ReplyParser,
    encode_disconnect, encode_read,
)

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 30.0
# Long reads go out as several requests in flight at once, so the server
# reads the next piece while the previous one is on the wire.
PIECE = 256 * 1024


class NbdConnectionError(NbdError):
    """The server cannot be reached, or the connection broke."""


class NbdTimeout(NbdError):
    """The server did not answer in time."""


@dataclass(frozen=True)
class NbdAddress:
    export: str = ""
    host: str | None = None
    port: int = DEFAULT_PORT
    socket: str | None = None

    def __str__(self) -> str:
        export = self.export
        if self.socket is not None:
            return f"nbd+unix:///{export}?socket={self.socket}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{export}"


def parse_nbd_uri(uri: str) -> NbdAddress:
    """`nbd://host[:port][/export]` or `nbd+unix:///[export]?socket=PATH`."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise NbdError(f"bad NBD URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme.startswith("nbds"):
        raise NbdError(f"bad NBD URI {uri!r}: TLS (nbds) is not supported")
    path = unquote(parts.path)
    export = path[1:] if path.startswith("/") else path
    query = parse_qs(parts.query)
    if scheme == "nbd":
        if not parts.hostname:
            raise NbdError(f"bad NBD URI {uri!r}: no host")
        return NbdAddress(export, parts.hostname, port or DEFAULT_PORT)
    if scheme == "nbd+unix":
        if parts.netloc:
            raise NbdError(f"bad NBD URI {uri!r}: nbd+unix takes no host (nbd+unix:///export?socket=PATH)")
        sockets = query.get("socket")
        if not sockets or not sockets[0]:
            raise NbdError(f"bad NBD URI {uri!r}: no ?socket=PATH")
        return NbdAddress(export, socket=sockets[0])
    raise NbdError(f"bad NBD URI {uri!r}: scheme {parts.scheme!r} is not supported "
                   "(use nbd:// or nbd+unix://)")


def _address(target: NbdAddress | str) -> NbdAddress:
    return target if isinstance(target, NbdAddress) else parse_nbd_uri(target)


def _prefixed(exc: NbdError, address: NbdAddress) -> NbdError:
    """The same error, its message now naming the server and export."""
    exc.args = (f"{address}: {exc}",) + exc.args[1:]
    return exc


def _quiet_fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: no "never retrieved" noise for abandoned pieces


class _Connection(asyncio.Protocol):
    """The socket side: feeds the sans-IO handshake, then the reply parser.

    Replies resolve the futures of waiting reads directly from
    `data_received`, so a read costs one write and one wake-up of the loop.
    """

    def __init__(self, address: NbdAddress, handshake: ClientHandshake) -> None:
        self.address = address
        self.handshake = handshake
        self.ready: asyncio.Future[ClientHandshake] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.parser: ReplyParser | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.broken: NbdError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream's, as connections make
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            parser = self.parser
            if parser is None:
                self._handshake_data(data)
                return
            parser.receive_data(data)
            waiting = self.waiting
            while (reply := parser.next_reply()) is not None:
                future = waiting.pop(reply.cookie, None)
                if future is None or future.done():
                    continue
                if reply.error:
                    try:
                        reply.check()
                    except NbdError as exc:
                        future.set_exception(_prefixed(exc, self.address))
                else:
                    future.set_result(reply.data)
        except NbdError as exc:
            self.fail(_prefixed(exc, self.address))

    def _handshake_data(self, data: bytes) -> None:
        handshake = self.handshake
        handshake.receive_data(data)
        out = handshake.data_to_send()
        if out:
            transport = self.transport
            assert transport is not None  # data comes after connection_made
            transport.write(out)
        if handshake.done:
            self.parser = ReplyParser()
            if handshake.trailing_data:
                raise NbdProtocolError("unexpected bytes after the handshake")
            if not self.ready.done():
                self.ready.set_result(handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            hint = " (unknown export?)" if self.handshake.export_name else ""
            self.fail(NbdConnectionError(
                f"{self.address}: the server closed the connection during the handshake{hint}"))
        elif self.broken is None:
            during = " during a read" if self.waiting else ""
            self.fail(NbdConnectionError(f"{self.address}: the server closed the connection{during}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, error: NbdError) -> None:
        """Break the connection: every waiting read, and every later one, gets `error`."""
        if self.broken is None:
            self.broken = error
        _quiet_fail(self.ready, self.broken)
        for future in self.waiting.values():
            _quiet_fail(future, self.broken)
        self.waiting.clear()
        if self.transport is not None:
            self.transport.abort()


def _peer(address: NbdAddress) -> str:
    """The server's end in the HTTP reader's words: `HOST port N`, or the socket."""
    if address.socket is not None:
        return f"socket {address.socket}"
    return f"{address.host} port {address.port}"


def _connect_reason(exc: OSError) -> str:
    """Why a connection failed, in the system's words ("Connection refused"),
    not asyncio's ("Connect call failed ('127.0.0.1', 9)"), so NBD and HTTP
    say the same thing. asyncio keeps the errno but rewrites the text, and
    for a name with several addresses (localhost) joins them all into one
    "Multiple exceptions: [Errno 111] ..." message with no errno."""
    import os
    import re
    import socket

    if isinstance(exc, socket.gaierror):  # its negative errno is no strerror
        return exc.strerror or str(exc)
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    codes = dict.fromkeys(int(n) for n in re.findall(r"\[Errno (\d+)\]", str(exc)))
    if codes:
        return "; ".join(os.strerror(n) for n in codes)
    return exc.strerror or str(exc) or type(exc).__name__


async def _connect(address: NbdAddress, handshake: ClientHandshake,
                   timeout: float) -> tuple[asyncio.Transport, _Connection]:
    loop = asyncio.get_running_loop()

    def factory() -> _Connection:
        return _Connection(address, handshake)
    try:
        async with asyncio.timeout(timeout):
            if address.socket is not None:
                transport, conn = await loop.create_unix_connection(factory, address.socket)
            else:
                # (None: this machine, as getaddrinfo reads it; a URI always names a host)
                host = address.host if address.host is not None else "localhost"
                transport, conn = await loop.create_connection(factory, host, address.port)
    except TimeoutError:
        raise NbdTimeout(f"{address}: no connection within {timeout:g}s") from None
    except OSError as exc:
        raise NbdConnectionError(f"{address}: cannot reach {_peer(address)}: "
                                 f"{_connect_reason(exc)}") from None
    try:
        async with asyncio.timeout(timeout):
            await conn.ready
    except TimeoutError:
        transport.abort()
        raise NbdTimeout(f"{address}: no answer within {timeout:g}s during the handshake") from None
    except BaseException:
        transport.abort()
        raise
    return transport, conn


class AsyncNbdClient:
    """One NBD connection in the transmission phase, reads only.

    Reads are pipelined: `read_many` (or several concurrent `read` calls)
    puts every request on the wire at once; replies may come in any order.
    """

    def __init__(self, address: NbdAddress, transport: asyncio.Transport, conn: _Connection,
                 timeout: float) -> None:
        self.address = address
        info = conn.handshake.export
        assert info is not None  # made once the handshake is done
        self.info: ExportInfo = info
        self.timeout = timeout
        self._transport = transport
        self._conn = conn
        self._cookies = itertools.count(1)
        self._closed = False

    @classmethod
    async def connect(cls, target: NbdAddress | str, *,
                      timeout: float = DEFAULT_TIMEOUT,
                      connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> "AsyncNbdClient":
        address = _address(target)
        try:
            transport, conn = await _connect(address, ClientHandshake(address.export),
                                             connect_timeout)
        except NbdExportNotFound as exc:
            reason = await _refusal(address, connect_timeout)
            if reason is None:
                raise
            raise NbdExportNotFound(f"{address}: export {address.export!r} refused by the "
                                    f"server: {reason}", exc.code) from None
        return cls(address, transport, conn, timeout)

    @property
    def size(self) -> int:
        return self.info.size

    def submit(self, offset: int, length: int) -> asyncio.Future[bytes]:
        """Send the requests for one range now; a future of its bytes.

        Works whether or not the loop is running (the caller then runs it
        until the future is done), which is what `NbdDevice` relies on.
        """
        conn = self._conn
        if conn.broken is not None:
            raise type(conn.broken)(*conn.broken.args)
        if self._closed:
            raise NbdConnectionError(f"{self.address}: read after close")
        if offset < 0 or length < 0 or offset + length > self.info.size:
            raise ValueError(f"read of {length} bytes at {offset} outside the export "
                             f"({self.info.size} bytes)")
        loop = conn.ready.get_loop()
        if length == 0:
            empty = loop.create_future()
            empty.set_result(b"")
            return empty
        limit = min(self.info.max_payload, PIECE)
        parser, waiting = conn.parser, conn.waiting
        assert parser is not None  # the handshake is over
        pieces = []
        out = []
        start, end = offset, offset + length
        while True:
            n = min(limit, end - start)
            cookie = next(self._cookies)
            parser.expect(cookie, start, n)
            future = loop.create_future()
            waiting[cookie] = future
            out.append(encode_read(cookie, start, n))
            pieces.append(future)
            start += n
            if start >= end:
                break
        self._transport.write(b"".join(out))
        if len(pieces) == 1:
            return pieces[0]
        joined = loop.create_future()

        def done(_: asyncio.Future[bytes]) -> None:
            if joined.done():
                return
            for piece in pieces:
                if not piece.done():
                    return
                failed = piece.exception()
                if failed is not None:
                    joined.set_exception(failed)
                    return
            joined.set_result(b"".join(piece.result() for piece in pieces))
        for piece in pieces:
            piece.add_done_callback(done)
        return joined

    def time_out(self) -> NbdTimeout:
        """Give up on the connection: its state is unknown after a lost reply."""
        error = NbdTimeout(f"{self.address}: no reply within {self.timeout:g}s")
        self._conn.fail(error)
        return error

    async def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read several (offset, length) ranges at once, all in flight together."""
        futures = [self.submit(offset, length) for offset, length in ranges]
        try:
            async with asyncio.timeout(self.timeout):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise self.time_out() from None

    async def read(self, offset: int, length: int) -> bytes:
        return (await self.read_many([(offset, length)]))[0]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn.broken is None:
            self._transport.write(encode_disconnect())
            conn.broken = NbdConnectionError(f"{self.address}: read after close")
            self._transport.close()  # flushes the disconnect request first
        try:
            async with asyncio.timeout(1.0):
                await conn.closed
        except TimeoutError:
            self._transport.abort()

    async def __aenter__(self) -> "AsyncNbdClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def list_exports(target: NbdAddress | str, *,
                       timeout: float = DEFAULT_CONNECT_TIMEOUT) -> list[tuple[str, str]]:
    """(name, description) of every export the server lists (NBD_OPT_LIST)."""
    address = _address(target)
    handshake = ClientHandshake(list_exports=True)
    transport, conn = await _connect(address, handshake, timeout)
    conn.broken = NbdConnectionError(f"{address}: closed")  # nothing more to read
    transport.close()  # after the NBD_OPT_ABORT already written
    return handshake.exports


REFUSED = "refused: "


async def _refusal(address: NbdAddress, timeout: float) -> str | None:
    """Why the server refuses `address`'s export, when its export list says
    so: NBD's option reply for a failed NBD_OPT_GO carries no reason, the
    docteur plugin lists a refused export with the description
    "refused: REASON" (a replaced image while pinned, another commit than
    commit=, a damaged replacement). None when the list says nothing."""
    try:
        exports = await list_exports(address, timeout=timeout)
    except NbdError:
        return None
    said = [description for name, description in exports
            if name == address.export or (address.export == "" and len(exports) == 1)]
    if len(said) == 1 and said[0].startswith(REFUSED):
        return said[0][len(REFUSED):]
    return None


def choose_block_size(info: ExportInfo, requested: int | None = None) -> int:
    """The device's block size: as asked, else the server's preference (≥ 512)."""
    if requested is not None:
        check_block_size(requested)
        if info.min_block and requested < info.min_block:
            raise NbdError(f"block size {requested} is below the server's minimum {info.min_block}")
        return requested
    size = 512
    if info.min_block:
        size = max(size, info.min_block)
    if info.preferred_block and info.preferred_block <= 65536:
        size = max(size, info.preferred_block)
    return size


class NbdDevice:
    """A synchronous `BlockDevice` over one NBD connection.

    Each call writes its requests and runs the device's private event loop
    until the replies are in; between calls nothing runs. It must not be
    called from a coroutine (use `AsyncNbdClient` there); calls from several
    threads are serialised.
    """

    def __init__(self, target: NbdAddress | str, block_size: int | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.address = _address(target)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._client: AsyncNbdClient | None = None
        try:
            self._client = self._loop.run_until_complete(AsyncNbdClient.connect(
                self.address, timeout=timeout, connect_timeout=connect_timeout))
            self.info = self._client.info
            self.capacity = self.info.size
            self.block_size = choose_block_size(self.info, block_size)
        except BaseException:
            self._shutdown()
            raise
        self.reads = 0

    def _wait(self, futures: list[asyncio.Future[bytes]]) -> list[bytes]:
        loop = self._loop
        client = self._client
        assert client is not None  # __init__ raised otherwise
        handle = loop.call_later(self.timeout, client.time_out)
        try:
            return [loop.run_until_complete(future) for future in futures]
        finally:
            handle.cancel()

    def _submit_and_wait(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("NbdDevice is synchronous: use AsyncNbdClient inside a coroutine")
        with self._lock:
            if self._loop.is_closed():
                raise NbdConnectionError(f"{self.address}: read after close")
            client = self._client
            assert client is not None  # __init__ raised otherwise
            futures = [client.submit(offset, length) for offset, length in ranges]
            return self._wait(futures)

    def read(self, offset: int, length: int) -> bytes:
        check_aligned(offset, length, self.block_size)
        n = clip(offset, length, self.capacity)
        if n == 0:
            return b""
        self.reads += 1
        return self._submit_and_wait([(offset, n)])[0]

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Aligned reads pipelined on the connection; one result per range."""
        clipped = []
        for offset, length in ranges:
            check_aligned(offset, length, self.block_size)
            clipped.append((offset, clip(offset, length, self.capacity)))
        self.reads += len(clipped)
        return self._submit_and_wait(clipped)

    def _shutdown(self) -> None:
        loop = self._loop
        if loop.is_closed():
            return
        try:
            if self._client is not None:
                loop.run_until_complete(self._client.close())
        finally:
            loop.close()

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def __enter__(self) -> "NbdDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NbdDevice({str(self.address)!r}, block size {self.block_size})"
