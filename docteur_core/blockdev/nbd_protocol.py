"""The client side of the NBD protocol, sans I/O.

Nothing here touches a socket: the classes take the bytes a server sent
(`receive_data`) and give back the bytes to send (`data_to_send`) and what
was learnt. `bytes_needed()` tells an I/O layer how many bytes to read next,
so it can use exact reads. This keeps every byte-level rule testable
without a server, and lets any I/O (asyncio here) drive it.

Only what a read-only reader needs is implemented: the fixed newstyle
handshake, `NBD_OPT_GO` (with a fallback to `NBD_OPT_EXPORT_NAME` for old
servers), `NBD_OPT_LIST`, and in transmission `NBD_CMD_READ` and
`NBD_CMD_DISC` with simple replies (structured replies are never
negotiated, so the server must not send them).

Reference: the NBD protocol, doc/proto.md of the NetworkBlockDevice/nbd
project.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections import deque
from dataclasses import dataclass

from ..errors import DeviceError

# -- constants (network byte order on the wire) -----------------------------

NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
OLDSTYLE_MAGIC = 0x00420281861253
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REPLY_MAGIC = 0x6E8A278C

# handshake flags (server) and client flags
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# transmission flags
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_CAN_MULTI_CONN = 1 << 8

# options
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_GO = 7

# option reply types
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_FLAG_ERROR = 1 << 31
REP_ERRORS = {
    NBD_REP_FLAG_ERROR | 1: ("NBD_REP_ERR_UNSUP", "option not supported by the server"),
    NBD_REP_FLAG_ERROR | 2: ("NBD_REP_ERR_POLICY", "refused by server policy"),
    NBD_REP_FLAG_ERROR | 3: ("NBD_REP_ERR_INVALID", "invalid request"),
    NBD_REP_FLAG_ERROR | 4: ("NBD_REP_ERR_PLATFORM", "not supported on the server's platform"),
    NBD_REP_FLAG_ERROR | 5: ("NBD_REP_ERR_TLS_REQD", "the server requires TLS"),
    NBD_REP_FLAG_ERROR | 6: ("NBD_REP_ERR_UNKNOWN", "export not found"),
    NBD_REP_FLAG_ERROR | 7: ("NBD_REP_ERR_SHUTDOWN", "the server is shutting down"),
    NBD_REP_FLAG_ERROR | 8: ("NBD_REP_ERR_BLOCK_SIZE_REQD", "the server requires block size negotiation"),
    NBD_REP_FLAG_ERROR | 9: ("NBD_REP_ERR_TOO_BIG", "request too big"),
    NBD_REP_FLAG_ERROR | 10: ("NBD_REP_ERR_EXT_HEADER_REQD", "the server requires extended headers"),
}
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6

# info types
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# commands
NBD_CMD_READ = 0
NBD_CMD_DISC = 2

DEFAULT_PORT = 10809
MAX_STRING = 4096                 # the spec's limit on names and messages
MAX_OPTION_REPLY = 64 * 1024      # no reply we accept is anywhere near this
DEFAULT_MAX_PAYLOAD = 32 << 20    # what servers accept when they do not say

_GREETING = struct.Struct(">QQH")
_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
GREETING_SIZE = _GREETING.size           # 18
OPTION_REPLY_HEADER_SIZE = _OPTION_REPLY.size  # 20
REPLY_HEADER_SIZE = _SIMPLE_REPLY.size   # 16


# -- errors -----------------------------------------------------------------

class NbdError(DeviceError):
    """Anything that went wrong talking to an NBD server."""


class NbdProtocolError(NbdError):
    """The server sent bytes the protocol does not allow."""


class NbdOptionError(NbdError):
    """The server refused an option during the handshake."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class NbdExportNotFound(NbdOptionError):
    """The server has no export of that name."""


class NbdCommandError(NbdError):
    """The server answered a command with an error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def _option_name(option: int) -> str:
    return {NBD_OPT_EXPORT_NAME: "NBD_OPT_EXPORT_NAME", NBD_OPT_ABORT: "NBD_OPT_ABORT",
            NBD_OPT_LIST: "NBD_OPT_LIST", NBD_OPT_GO: "NBD_OPT_GO"}.get(option, f"option {option}")


def _text(data: bytes) -> str:
    """A server-supplied string, made safe for a one-line message."""
    text = data[:MAX_STRING].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def describe_errno(code: int) -> str:
    name = _errno.errorcode.get(code)
    return f"{name} ({code})" if name else f"error {code}"


# -- handshake --------------------------------------------------------------

@dataclass(frozen=True)
class ExportInfo:
    """What NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) told us about an export."""

    name: str
    size: int
    flags: int
    min_block: int | None = None
    preferred_block: int | None = None
    max_block: int | None = None
    description: str | None = None

    @property
    def read_only(self) -> bool:
        return bool(self.flags & NBD_FLAG_READ_ONLY)

    @property
    def max_payload(self) -> int:
        """The longest single read the server accepts."""
        if self.max_block:
            return min(self.max_block, DEFAULT_MAX_PAYLOAD)
        return DEFAULT_MAX_PAYLOAD


def encode_option(option: int, data: bytes = b"") -> bytes:
    return _OPTION.pack(IHAVEOPT, option, len(data)) + data


def encode_go(export_name: str, info_requests: tuple[int, ...] = (NBD_INFO_BLOCK_SIZE,)) -> bytes:
    name = export_name.encode("utf-8")
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(info_requests))
    data += b"".join(struct.pack(">H", i) for i in info_requests)
    return encode_option(NBD_OPT_GO, data)


def check_export_name(export_name: str) -> str:
    name = export_name.encode("utf-8")
    if len(name) > MAX_STRING or b"\0" in name:
        raise NbdError("an NBD export name must be at most 4096 bytes without NUL")
    return export_name


class ClientHandshake:
    """The client's half of the fixed newstyle handshake.

    Feed the server's bytes with `receive_data`; send what `data_to_send`
    returns after every call (and once at the start, though the client
    speaks second). When `done` is true, `export` holds the negotiated
    export (or `exports` the list, in listing mode) and the transmission
    phase can begin; `trailing_data` is anything received past the end of
    the handshake. Every malformed input raises an `NbdError` at once:
    nothing here ever waits for bytes that cannot come.
    """

    def __init__(self, export_name: str = "", *, list_exports: bool = False,
                 request_block_size: bool = True) -> None:
        self.export_name = check_export_name(export_name)
        self.list_exports = list_exports
        self.request_block_size = request_block_size
        self._buf = bytearray()
        self._out = bytearray()
        self._state = "greeting"
        self._need = GREETING_SIZE
        self._option = 0
        self._reply_type = 0
        self.no_zeroes = False
        self.done = False
        self.export: ExportInfo | None = None
        self.exports: list[tuple[str, str]] = []
        self._size: int | None = None
        self._flags = 0
        self._block: tuple[int, int, int] | None = None
        self._description: str | None = None

    # the I/O layer's side
    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def bytes_needed(self) -> int:
        """How many more bytes to read before anything can happen (0 when done)."""
        return 0 if self.done else max(1, self._need - len(self._buf))

    @property
    def trailing_data(self) -> bytes:
        return bytes(self._buf) if self.done else b""

    def receive_data(self, data: bytes) -> None:
        if self.done:
            self._buf += data
            return
        self._buf += data
        while not self.done and len(self._buf) >= self._need:
            chunk = bytes(self._buf[:self._need])
            del self._buf[:self._need]
            getattr(self, "_on_" + self._state)(chunk)

    # states
    def _expect(self, state: str, need: int) -> None:
        self._state = state
        self._need = need

    def _on_greeting(self, chunk: bytes) -> None:
        magic, second, flags = _GREETING.unpack(chunk)
        if magic != NBDMAGIC:
            raise NbdProtocolError("not an NBD server (no NBDMAGIC greeting)")
        if second == OLDSTYLE_MAGIC:
            raise NbdProtocolError("the server speaks the oldstyle handshake, which is not supported")
        if second != IHAVEOPT:
            raise NbdProtocolError(f"not an NBD newstyle server (magic {second:#x})")
        if not flags & NBD_FLAG_FIXED_NEWSTYLE:
            raise NbdProtocolError("the server does not support the fixed newstyle handshake")
        self.no_zeroes = bool(flags & NBD_FLAG_NO_ZEROES)
        client_flags = NBD_FLAG_C_FIXED_NEWSTYLE | (NBD_FLAG_C_NO_ZEROES if self.no_zeroes else 0)
        self._out += struct.pack(">I", client_flags)
        if self.list_exports:
            self._send_option(NBD_OPT_LIST)
        else:
            self._send_go()

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._out += encode_option(option, data)
        self._option = option
        self._expect("reply_header", OPTION_REPLY_HEADER_SIZE)

    def _send_go(self) -> None:
        requests = (NBD_INFO_BLOCK_SIZE,) if self.request_block_size else ()
        self._out += encode_go(self.export_name, requests)
        self._option = NBD_OPT_GO
        self._expect("reply_header", OPTION_REPLY_HEADER_SIZE)

    def _on_reply_header(self, chunk: bytes) -> None:
        magic, option, reply_type, length = _OPTION_REPLY.unpack(chunk)
        if magic != OPTION_REPLY_MAGIC:
            raise NbdProtocolError(f"bad option reply magic {magic:#x}")
        if option != self._option:
            raise NbdProtocolError(
                f"reply to {_option_name(option)} while waiting for {_option_name(self._option)}")
        if length > MAX_OPTION_REPLY:
            raise NbdProtocolError(f"option reply of {length} bytes is too long")
        self._reply_type = reply_type
        if length:
            self._expect("reply_data", length)
        else:
            self._on_reply_data(b"")

    def _on_reply_data(self, data: bytes) -> None:
        reply_type = self._reply_type
        self._expect("reply_header", OPTION_REPLY_HEADER_SIZE)
        if reply_type & NBD_REP_FLAG_ERROR:
            self._on_error_reply(reply_type, data)
        elif self._option == NBD_OPT_GO:
            self._on_go_reply(reply_type, data)
        else:  # NBD_OPT_LIST
            self._on_list_reply(reply_type, data)

    def _on_error_reply(self, reply_type: int, data: bytes) -> None:
        if reply_type == NBD_REP_ERR_UNSUP and self._option == NBD_OPT_GO:
            # An old server: the pre-GO way, which ends the handshake at once.
            self._out += encode_option(NBD_OPT_EXPORT_NAME, self.export_name.encode("utf-8"))
            self._option = NBD_OPT_EXPORT_NAME
            self._expect("export_name_reply", 10 if self.no_zeroes else 134)
            return
        name, meaning = REP_ERRORS.get(reply_type, (f"error {reply_type & 0x7FFFFFFF}", "refused"))
        said = _text(data)
        detail = f" (server says: {said})" if said else ""
        what = "listing exports" if self._option == NBD_OPT_LIST else f"export {self.export_name!r}"
        if reply_type == NBD_REP_ERR_UNKNOWN:
            raise NbdExportNotFound(f"export {self.export_name!r} not found{detail}", reply_type)
        raise NbdOptionError(f"{what}: {meaning} [{name}]{detail}", reply_type)

    def _on_go_reply(self, reply_type: int, data: bytes) -> None:
        if reply_type == NBD_REP_INFO:
            if len(data) < 2:
                raise NbdProtocolError("NBD_REP_INFO reply too short")
            (info,) = struct.unpack_from(">H", data)
            if info == NBD_INFO_EXPORT:
                if len(data) != 12:
                    raise NbdProtocolError(f"NBD_INFO_EXPORT of {len(data)} bytes, not 12")
                self._size, self._flags = struct.unpack_from(">QH", data, 2)
            elif info == NBD_INFO_BLOCK_SIZE:
                if len(data) != 14:
                    raise NbdProtocolError(f"NBD_INFO_BLOCK_SIZE of {len(data)} bytes, not 14")
                minimum, preferred, maximum = struct.unpack_from(">III", data, 2)
                if not _power_of_two(minimum) or minimum > 65536:
                    raise NbdProtocolError(f"bad minimum block size {minimum}")
                if not _power_of_two(preferred) or preferred < minimum:
                    raise NbdProtocolError(f"bad preferred block size {preferred}")
                if maximum < preferred:
                    raise NbdProtocolError(f"bad maximum block size {maximum}")
                self._block = (minimum, preferred, maximum)
            elif info == NBD_INFO_DESCRIPTION:
                self._description = _text(data[2:])
            # NBD_INFO_NAME and unknown information: ignored, as the spec asks
        elif reply_type == NBD_REP_ACK:
            if data:
                raise NbdProtocolError("NBD_REP_ACK with a payload")
            if self._size is None:
                raise NbdProtocolError("the server accepted NBD_OPT_GO without NBD_INFO_EXPORT")
            least, preferred, most = self._block or (None, None, None)
            self.export = ExportInfo(self.export_name, self._size, self._flags, least,
                                     preferred, most, description=self._description)
            self.done = True
        # other non-error replies are ignored, as the spec asks

    def _on_list_reply(self, reply_type: int, data: bytes) -> None:
        if reply_type == NBD_REP_SERVER:
            if len(data) < 4:
                raise NbdProtocolError("NBD_REP_SERVER reply too short")
            (n,) = struct.unpack_from(">I", data)
            if n > len(data) - 4:
                raise NbdProtocolError("NBD_REP_SERVER name longer than its reply")
            self.exports.append((_text(data[4:4 + n]), _text(data[4 + n:])))
        elif reply_type == NBD_REP_ACK:
            self._out += encode_option(NBD_OPT_ABORT)
            self.done = True
        else:
            raise NbdProtocolError(f"unexpected reply type {reply_type} to NBD_OPT_LIST")

    def _on_export_name_reply(self, chunk: bytes) -> None:
        size, flags = struct.unpack_from(">QH", chunk)
        self.export = ExportInfo(self.export_name, size, flags)
        self.done = True


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# -- transmission -----------------------------------------------------------

def encode_read(cookie: int, offset: int, length: int) -> bytes:
    if not (0 <= offset < 1 << 64 and 0 <= length < 1 << 32 and 0 <= cookie < 1 << 64):
        raise ValueError(f"read out of range: offset {offset}, length {length}")
    return _REQUEST.pack(REQUEST_MAGIC, 0, NBD_CMD_READ, cookie, offset, length)


def encode_disconnect(cookie: int = 0) -> bytes:
    return _REQUEST.pack(REQUEST_MAGIC, 0, NBD_CMD_DISC, cookie, 0, 0)


def parse_reply_header(header: bytes) -> tuple[int, int]:
    """(error, cookie) of a 16-byte simple reply header."""
    if len(header) != REPLY_HEADER_SIZE:
        raise NbdProtocolError(f"reply header of {len(header)} bytes")
    magic, error, cookie = _SIMPLE_REPLY.unpack(header)
    if magic != SIMPLE_REPLY_MAGIC:
        if magic in (STRUCTURED_REPLY_MAGIC, EXTENDED_REPLY_MAGIC):
            raise NbdProtocolError("the server sent a structured reply, which was not negotiated")
        raise NbdProtocolError(f"bad reply magic {magic:#x}")
    return error, cookie


@dataclass(frozen=True)
class Reply:
    cookie: int
    offset: int
    length: int
    error: int
    data: bytes  # empty when error != 0

    def check(self) -> bytes:
        """The data, or an NbdCommandError naming the failed read."""
        if self.error:
            raise NbdCommandError(
                f"server error {describe_errno(self.error)} reading {self.length} bytes "
                f"at offset {self.offset}", self.error)
        return self.data


class ReplyParser:
    """Simple replies to pipelined reads, in whatever order they come.

    A simple reply does not carry its length, so every read is registered
    with `expect` before it is sent; a reply whose cookie is not pending is a
    protocol error (the stream can no longer be framed).
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, int]] = {}
        self._buf = bytearray()
        self._header: tuple[int, int] | None = None
        self._replies: deque[Reply] = deque()

    def expect(self, cookie: int, offset: int, length: int) -> None:
        if cookie in self._pending:
            raise ValueError(f"cookie {cookie} is already in flight")
        self._pending[cookie] = (offset, length)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _need(self) -> int:
        if self._header is None:
            return REPLY_HEADER_SIZE
        error, cookie = self._header
        return 0 if error else self._pending[cookie][1]

    def bytes_needed(self) -> int:
        return max(1, self._need() - len(self._buf))

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        while True:
            need = self._need()
            if len(self._buf) < need:
                return
            with memoryview(self._buf) as view:
                chunk = bytes(view[:need])
            del self._buf[:need]
            if self._header is None:
                error, cookie = parse_reply_header(chunk)
                if cookie not in self._pending:
                    raise NbdProtocolError(f"reply with unknown cookie {cookie:#x}")
                self._header = (error, cookie)
            else:
                error, cookie = self._header
                self._header = None
                offset, length = self._pending.pop(cookie)
                self._replies.append(Reply(cookie, offset, length, error, chunk))

    def next_reply(self) -> Reply | None:
        return self._replies.popleft() if self._replies else None
