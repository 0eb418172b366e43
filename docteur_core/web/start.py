"""Start the web server on opened images, until Ctrl-C or SIGTERM: the
shared end of `docteur http` (command.py) and of the guest's server
(guest.py). No argparse here: the guest imports this at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from ..reader.image import Image


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def serve(images: list[Image], listen: tuple[str, int], *, listing: bool, quiet: bool,
          say: Callable[[str], None], source: str, cache_bytes: int | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; the shared end of `docteur http` and
    the guest's server. `say` writes a line on stderr."""
    import errno
    import signal
    import threading

    from ..errors import DocteurError
    from .server import Server
    from .site import Site

    commit = images[0].commit_info(0)
    site = Site(int(commit.date.timestamp()), listing=listing,
                **({} if cache_bytes is None else {"cache_bytes": cache_bytes}))
    try:
        server = Server(site, images, listen, access_log=not quiet)
    except OSError as exc:
        host, port = listen
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise DocteurError(f"cannot listen on {where}: the port is taken (another server "
                               "is on it); choose another with --listen HOST:PORT") from None
        if exc.errno == errno.EACCES:
            raise DocteurError(f"cannot listen on {where}: permission denied (ports below "
                               "1024 need privileges); choose another with --listen") from None
        raise DocteurError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM,
                                                                   signal.SIGHUP)}
    say(f"serving {source} (commit {commit.id}) on {server.url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
