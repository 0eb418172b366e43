"""Child processes (nbdkit, QEMU, tenders, git, ssh) that never outlive docteur.

Each child is started in its own process group and gets PR_SET_PDEATHSIG,
so that it dies with the docteur process that started it even when that
one is killed (SIGKILL included); `stop` then ends the whole group,
politely and then for sure. PR_SET_PDEATHSIG fires when the *thread* that
started the child ends, so start tied children from a thread that lives as
long as they should (docteur starts them from its main thread).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import Any, Callable

from .errors import DocteurError


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A function that, run in a child, has it killed when the parent dies.

    Resolved in the parent: between fork and exec only the call is made.
    """
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # not Linux: `finally` blocks remain
        return None
    parent = os.getpid()

    def tie() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # The parent may have died between fork and prctl: then nobody
        # will send the signal, so go now.
        if os.getppid() != parent:
            os._exit(1)

    return tie


def start(cmd: Sequence[str | bytes], *, error: type[DocteurError] = DocteurError, hint: str = "",
          tied: bool = True, **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen `cmd` in a new process group; tied to this process unless `tied` is false.

    A missing program is an `error` naming it (and `hint`, e.g. which Debian
    package has it). stdin is /dev/null unless given.
    """
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(cmd, start_new_session=True,
                                preexec_fn=_pdeathsig_setter() if tied else None,
                                **kwargs)
    except FileNotFoundError:
        raise error(f"{os.fsdecode(cmd[0])} not found" + (f": {hint}" if hint else "")) from None


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """Stop a process and its group: SIGTERM, then SIGKILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # the group may outlive its leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (a race remains: retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]  # (the socket module answers Any)
        return port
