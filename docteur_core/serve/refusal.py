"""The NBD handshake of a client that cannot be served, with the reason.

Rules:
- Fixed newstyle, as nbdkit speaks it: NBD_OPT_GO and NBD_OPT_INFO get
  NBD_REP_ERR_UNKNOWN ("export not available") with the reason as the
  error's message (qemu and libnbd print it), NBD_OPT_LIST lists the one
  export "" described "refused: REASON" (what docteur's client reads, as
  from the plugin), NBD_OPT_ABORT is acknowledged, any other option is
  unsupported; the old NBD_OPT_EXPORT_NAME cannot be refused politely, so
  the connection is closed.
- Never more than a few option exchanges and `timeout` seconds per
  socket read: a client that says nothing costs one thread for that long.
"""

from __future__ import annotations

import socket
import struct

from ..blockdev.nbd_protocol import (IHAVEOPT, MAX_STRING, NBD_FLAG_FIXED_NEWSTYLE,
                                     NBD_FLAG_NO_ZEROES, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME,
                                     NBD_OPT_GO, NBD_OPT_LIST, NBD_REP_ACK,
                                     NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_SERVER,
                                     NBDMAGIC, OPTION_REPLY_MAGIC)

NBD_OPT_INFO = 6
REFUSED = "refused: "
MAX_OPTIONS = 16
MAX_OPTION_DATA = 64 * 1024


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPTION_REPLY_MAGIC, option, reply_type, len(data)) + data


def refusal_replies(option: int, reason: str) -> tuple[bytes, bool]:
    """What to answer `option`, and whether the handshake ends there."""
    message = reason.encode("utf-8")[:MAX_STRING]
    if option in (NBD_OPT_GO, NBD_OPT_INFO):
        return option_reply(option, NBD_REP_ERR_UNKNOWN, message), False
    if option == NBD_OPT_LIST:
        listed = (REFUSED + reason).encode("utf-8")[:MAX_STRING]
        return (option_reply(option, NBD_REP_SERVER, struct.pack(">I", 0) + listed)
                + option_reply(option, NBD_REP_ACK)), False
    if option == NBD_OPT_ABORT:
        return option_reply(option, NBD_REP_ACK), True
    if option == NBD_OPT_EXPORT_NAME:
        return b"", True
    return option_reply(option, NBD_REP_ERR_UNSUP), False


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def refuse(sock: socket.socket, reason: str, timeout: float = 30.0) -> None:
    """Answer the handshake on `sock` with `reason`, then close it."""
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT,
                                 NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES))
        if _read(sock, 4) is None:
            return
        for _ in range(MAX_OPTIONS):
            header = _read(sock, 16)
            if header is None:
                return
            magic, option, length = struct.unpack(">QII", header)
            if magic != IHAVEOPT or length > MAX_OPTION_DATA:
                return
            if length and _read(sock, length) is None:
                return
            reply, last = refusal_replies(option, reason)
            if reply:
                sock.sendall(reply)
            if last:
                return
    except OSError:
        return
    finally:
        sock.close()
