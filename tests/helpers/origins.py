"""Scripted HTTP origins on loopback: a socket whose every connection gets a
behaviour written by the test (a reply cut short, a wrong status, silence).

For the faults a real nginx cannot be made to commit; the honest origin of
the tests is tests/helpers/nginx.py.
"""

from __future__ import annotations

import socket
import threading

# A ranged reply's head: the first 128 KiB of a 1 MiB image, with a validator.
HEAD = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-131071/1048576\r\n"
        b"Content-Length: 131072\r\nETag: \"x\"\r\n\r\n")


class TinyServer:
    """A loopback socket with a scripted behaviour per connection."""

    def __init__(self, behave) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.behave = behave
        self.conns: list[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/image.img"

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(65536)
            self.behave(conn)

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()
