"""`docteur serve IMAGE`: one nbdkit per client, given the image of its generation.

Rules:
- docteur listens (TCP or a Unix socket) and accepts; for each client it
  asks `Generations` for the current image (a replaced file is checked
  first, the client waiting), then hands the connected socket to `nbdkit
  --single` with nbdkit's file plugin reading that generation's descriptor
  (`file=/proc/self/fd/N`, inherited). The bytes are served in C, as
  nbdkit's own file plugin serves them (the reference of bench/serve.py),
  with the page cache as the only cache: no cache shared between clients,
  so no client can ever read blocks of another generation.
- A client connected before a rebuild keeps its nbdkit and its
  descriptor: it reads the old image to the end, consistently; clients
  connecting after the new file is in place get the new one. An old
  generation is retired by the kernel: its file is freed when its last
  nbdkit exits.
- A client that cannot be served (a damaged replacement, another commit
  than the pin, a removed image) gets the reason in its handshake
  (`refusal.refuse`), and the reason is logged on stderr.
- The export's description names the commit and tree (as the plugin's);
  the block sizes are the plugin's (512, the image's block size, 32 MiB).
- Every nbdkit is tied to this process: stopping it (Ctrl-C, SIGTERM,
  even SIGKILL) ends every connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import children
from ..errors import DocteurError
from .generations import Generation, Generations, Refused
from .nbdkit import PACKAGES, Listen, ServeError

MAX_REQUEST = 32 * 1024 * 1024
PREFERRED_MIN = 4096
BACKLOG = 64
REAP_INTERVAL = 0.5


def connection_command(generation: Generation) -> list[str]:
    """nbdkit serving one connection on its stdin/stdout from `generation`'s descriptor."""
    info = generation.info
    preferred = min(MAX_REQUEST, max(PREFERRED_MIN, info.block_size))
    return ["nbdkit", "--single", "--readonly", "--exit-with-parent",
            "--filter=exportname", "--filter=blocksize-policy",
            "file", f"file=/proc/self/fd/{generation.fd}",
            f"exportdesc=fixed:{info.description}",
            "blocksize-minimum=512", f"blocksize-preferred={preferred}",
            f"blocksize-maximum={MAX_REQUEST}"]


def listen_sockets(listen: Listen) -> list[socket.socket]:
    """Bound and listening sockets for `listen` (every address it resolves to).
    A taken port or a missing address is a `ServeError`, one line."""
    import errno

    if listen.unix is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.path.abspath(listen.unix))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ServeError(f"cannot listen on {listen.unix}: {exc.strerror or exc}") from None
        return [sock]
    try:
        addresses = socket.getaddrinfo(listen.ip, listen.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--ip {listen.ip}: {exc.strerror}") from None
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen(BACKLOG)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(f"{listen.ip} port {listen.port} is already in use "
                                     "(another server listens there: choose --port or "
                                     "--unix)") from None
                raise ServeError(f"cannot listen on {listen.ip} port {listen.port}: "
                                 f"{exc.strerror or exc}") from None
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


@dataclass
class Front:
    """The accepting loop: `generations` already started, `sockets` listening."""

    generations: Generations
    sockets: list[socket.socket]
    log: TextIO | None = None  # a text stream for what happens (None: quiet)

    def __post_init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []
        self._served = self.generations.generation.number if self.generations.generation else 0

    def say(self, text: str) -> None:
        if self.log is not None:
            try:
                print(f"docteur serve: {text}", file=self.log, flush=True)
            except (OSError, ValueError):
                pass

    def serve_forever(self) -> None:
        """Until interrupted (KeyboardInterrupt from a signal handler)."""
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select(REAP_INTERVAL):
                    listening = key.fileobj
                    assert isinstance(listening, socket.socket)  # only `sockets` are registered
                    try:
                        conn, _ = listening.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    self.serve(conn)
                self.reap()

    def serve(self, conn: socket.socket) -> None:
        """One client: its generation's nbdkit, or the reason it is refused."""
        try:
            generation = self.generations.current()
        except Exception as exc:  # Refused, or a failing disk while checking: said, not fatal
            if not isinstance(exc, (Refused, DocteurError, OSError)):
                exc = Refused(f"{self.generations.path}: cannot check the image: "
                              f"{type(exc).__name__}: {exc}")
            self.say(f"a client was refused: {exc}")
            threading.Thread(target=_refuse, args=(conn, str(exc)), daemon=True).start()
            return
        if generation.number != self._served:
            self._served = generation.number
            self.say(f"{self.generations.path} was replaced: new clients get commit "
                     f"{generation.info.commit_hex} (clients already connected keep the "
                     "image they opened)")
        try:
            with conn:
                self._children.append(children.start(
                    connection_command(generation), error=ServeError, hint=PACKAGES,
                    stdin=conn, stdout=conn,
                    stderr=self.log if self.log is not None else subprocess.DEVNULL,
                    pass_fds=(generation.fd,)))
        except (ServeError, OSError) as exc:  # no nbdkit, no more processes: the client
            self.say(f"a client could not be served: {exc}")  # sees its connection closed

    def reap(self) -> None:
        self._children = [proc for proc in self._children if proc.poll() is None]

    @property
    def connections(self) -> int:
        self.reap()
        return len(self._children)

    def close(self) -> None:
        for proc in self._children:
            children.stop(proc)
        self._children = []
        for sock in self.sockets:
            sock.close()
        self.generations.close()


def _refuse(conn: socket.socket, reason: str) -> None:
    from .refusal import refuse

    refuse(conn, reason)


def remove_socket(listen: Listen) -> None:
    if listen.unix is not None and Path(listen.unix).is_socket():
        Path(listen.unix).unlink(missing_ok=True)
