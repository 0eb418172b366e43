"""nbdkit with the docteur plugin: its command line (pure) and its process.

`docteur serve` runs it for a user, `docteur boot` for the time of a boot.
nbdkit does the NBD protocol and, with its `cache` filter in front of the
plugin, serves repeated reads in C without entering Python at all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import children
from ..errors import DocteurError
from .workdir import WorkFolder, sweep

PLUGIN = Path(__file__).resolve().parent / "plugin.py"
SERVERS = ("docteur", "file")
VERIFY_LEVELS = ("quick", "full", "none")
DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 10809
# What nbdkit's cache filter may keep on disk (a sparse temporary file in
# $TMPDIR, /var/tmp by default). "auto": for an image up to AUTO_CACHE_MAX,
# no `cache-max-size` at all, since the cache never grows past the image's
# own size and the filter's LRU bookkeeping, on only when a bound is set,
# cost 40% of random-read speed (bench/serve.py); a larger image gets
# AUTO_CACHE_MAX as its bound.
DEFAULT_CACHE_SIZE = "auto"
AUTO_CACHE_MAX = 1 << 30
CACHE_BLOCK = 4096
PACKAGES = "install Debian's nbdkit and nbdkit-plugin-python"


class ServeError(DocteurError):
    """nbdkit could not serve the image."""


@dataclass(frozen=True)
class Listen:
    """Where nbdkit listens: a TCP address and port, or a Unix socket."""

    ip: str = DEFAULT_IP
    port: int = DEFAULT_PORT
    unix: Path | None = None

    @property
    def uri(self) -> str:
        """The NBD URI a client on this machine (or the network, for a
        wildcard address) should use."""
        if self.unix is not None:
            return f"nbd+unix:///?socket={os.path.abspath(self.unix)}"
        host = self.ip
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"nbd://{host}:{self.port}/"

    def options(self) -> list[str]:
        if self.unix is not None:
            return ["--unix", os.path.abspath(self.unix)]
        return ["--ipaddr", self.ip, "--port", str(self.port)]


def nbdkit_prefix(listen: Listen, *, foreground: bool, exit_with_parent: bool,
                  pidfile: str | Path | None) -> list[str]:
    """`nbdkit --readonly` and the options every docteur server shares, up
    to the filters and the plugin."""
    argv = ["nbdkit", "--readonly", *listen.options()]
    if foreground:
        argv.append("--foreground")
    if exit_with_parent:
        argv.append("--exit-with-parent")
    if pidfile is not None:
        argv += ["--pidfile", os.path.abspath(pidfile)]
    return argv


def command(target: str | Path, listen: Listen, *, server: str = "docteur",
            verify: str = "quick", cache_size: str | None = DEFAULT_CACHE_SIZE,
            foreground: bool = True, exit_with_parent: bool = False,
            pidfile: str | Path | None = None, commit: str | None = None) -> list[str]:
    """The nbdkit command line that serves `target` (an image, or a folder of
    `*.img` for the docteur plugin) read-only.

    `commit` (an image, the docteur plugin) is the commit it must hold: the
    plugin's `commit=`, checked at start-up and for a replaced file.

    `cache_size` puts nbdkit's cache filter in front (`cache-on-read`), and
    pins the plugin to the image it checked at start-up: the filter's cache
    is shared by every connection, so a replaced image would be read through
    blocks of the old one. A folder is never cached, its exports would share
    one cache.
    """
    if server not in SERVERS:
        raise ServeError(f"unknown server {server!r} (one of {', '.join(SERVERS)})")
    if verify not in VERIFY_LEVELS:
        raise ServeError(f"unknown verify level {verify!r} (one of {', '.join(VERIFY_LEVELS)})")
    path = os.path.abspath(target)  # nbdkit changes directory when it goes to the background
    folder = os.path.isdir(path)
    if commit is not None and (folder or server != "docteur"):
        raise ServeError("a pinned commit needs one image served by the docteur plugin")
    argv = nbdkit_prefix(listen, foreground=foreground, exit_with_parent=exit_with_parent,
                         pidfile=pidfile)
    cached = cache_size is not None and not folder
    if cached and cache_size == "auto":
        cache_size = auto_cache_size(os.path.getsize(path))
    if cached:
        argv.append("--filter=cache")
    if server == "file":
        argv += ["file", f"{'dir' if folder else 'file'}={path}"]
    else:
        argv += ["python", str(PLUGIN), f"{'dir' if folder else 'image'}={path}",
                 f"verify={verify}"]
        if cached:
            argv.append("pin=true")
        if commit is not None:
            argv.append(f"commit={commit}")
    if cached:
        # 4 KiB blocks: a guest's random 4 KiB read no longer fetches and
        # stores 64 KiB (2.6x the random-read rate, bench/serve.py).
        argv += ["cache-on-read=true", f"cache-min-block-size={CACHE_BLOCK}"]
        if cache_size:
            argv.append(f"cache-max-size={cache_size}")
    return argv


def auto_cache_size(image_size: int) -> str:
    """The cache bound for an image: "" (none: the image's size bounds it)
    up to AUTO_CACHE_MAX, AUTO_CACHE_MAX beyond."""
    return "" if image_size <= AUTO_CACHE_MAX else f"{AUTO_CACHE_MAX >> 20}M"


_PREFIX = re.compile(r"^nbdkit: (?:[\w.-]+(?:\[\d+\])?: )?(?:error: )?")
_CALLBACK = re.compile(r"^.*?\.py: \w+: error: (?:\w+: )?")


def reason(stderr: str, listen: Listen | None = None) -> str:
    """nbdkit's last words, as one line a user can act on."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "nbdkit exited without a message"
    text = "\n".join(lines)
    if "Address already in use" in text:
        where = listen.unix if listen and listen.unix else \
            (f"{listen.ip} port {listen.port}" if listen else "the address")
        return f"{where} is already in use (another server listens there: choose --port or --unix)"
    if "nbdkit-python-plugin" in text and ("cannot open" in text or "No such file" in text):
        return f"nbdkit's Python plugin is missing: {PACKAGES}"
    errors = [line for line in lines if "error" in line] or lines
    line = _CALLBACK.sub("", _PREFIX.sub("", errors[-1]))
    return line.strip()


def check_installed() -> None:
    if shutil.which("nbdkit") is None:
        raise ServeError(f"nbdkit not found: {PACKAGES}")


class Server:
    """nbdkit in the foreground, tied to this process: started, waited for
    until it listens, stopped (with everything it started) by `stop`.

    A `Listen` with port 0 takes a free port (retried if another process
    takes it first).
    """

    def __init__(self, argv_for: Callable[[Listen, Path], list[str]], listen: Listen,
                 timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> None:
        """`argv_for(listen, pidfile)` gives the command line to run; `env`
        nbdkit's environment (None: this one's)."""
        self.argv_for = argv_for
        self.env = env
        self.listen = listen
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: WorkFolder | None = None

    @property
    def uri(self) -> str:
        return self.listen.uri

    def start(self) -> "Server":
        check_installed()
        sweep()  # the folders of servers killed before they could remove theirs
        self._tmp = WorkFolder()
        pick_port = self.listen.unix is None and self.listen.port == 0
        try:
            for _attempt in range(5 if pick_port else 1):
                if pick_port:
                    self.listen = Listen(self.listen.ip, children.free_port(self.listen.ip))
                message = self._try_start()
                if message is None:
                    return self
                if not (pick_port and "Address already in use" in message):
                    raise ServeError(reason(message, self.listen))
            raise ServeError("nbdkit found no free port")
        except BaseException:
            self.stop()
            raise

    def _try_start(self) -> str | None:
        """None once nbdkit listens, else what nbdkit said when it gave up."""
        tmp = self._tmp
        assert tmp is not None  # made by start()
        pidfile = Path(tmp.name) / f"nbdkit-{time.monotonic_ns()}.pid"
        with open(Path(tmp.name) / "nbdkit.err", "w+b") as errors:
            self.proc = children.start(self.argv_for(self.listen, pidfile), error=ServeError,
                                       hint=PACKAGES, stdout=subprocess.DEVNULL, stderr=errors,
                                       env=self.env, pass_fds=(tmp.lock_fd,))
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if pidfile.exists() and pidfile.stat().st_size:
                    return None  # nbdkit writes its pidfile once it listens
                if self.proc.poll() is not None:
                    errors.seek(0)
                    self.proc = None
                    return errors.read().decode(errors="replace").strip()
                time.sleep(0.02)
        raise ServeError(f"nbdkit did not start within {self.timeout:.0f} s")

    def wait(self, log: BinaryIO | None = None) -> int:
        """Until nbdkit exits; what it logs meanwhile (a refused client, a
        replaced image) is copied to `log` (a binary stream) as it comes."""
        if self.proc is None:
            return 0
        if log is None:
            return self.proc.wait()
        assert self._tmp is not None  # made with the process
        with open(Path(self._tmp.name) / "nbdkit.err", "rb") as errors:
            errors.seek(0, os.SEEK_END)  # start-up messages were dealt with
            try:
                while True:
                    status = self.proc.poll()
                    chunk = errors.read()
                    if chunk:
                        log.write(chunk)
                        log.flush()
                    if status is not None:
                        return status
                    time.sleep(0.2)
            finally:
                # Ctrl-C may come within a poll's interval of a refusal:
                # its reason still reaches the user.
                chunk = errors.read()
                if chunk:
                    log.write(chunk)
                    log.flush()

    def stop(self) -> None:
        children.stop(self.proc)
        self.proc = None
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_background(argv: list[str], listen: Listen, timeout: float = 120.0,
                        env: dict[str, str] | None = None) -> int:
    """Run nbdkit as a daemon (`argv` without --foreground, with --pidfile,
    which must not exist yet); return its pid once it listens, or raise with
    nbdkit's reason.

    nbdkit checks the image, binds, then forks: its first process exits 0
    only when the server is ready.
    """
    check_installed()
    pidfile = Path(argv[argv.index("--pidfile") + 1])
    with tempfile.TemporaryFile() as errors:  # not a pipe: the daemon keeps it open
        proc = children.start(argv, error=ServeError, hint=PACKAGES, tied=False,
                              stdout=subprocess.DEVNULL, stderr=errors, env=env)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            children.stop(proc)
            raise ServeError(f"nbdkit did not start within {timeout:.0f} s") from None
        if status != 0:
            errors.seek(0)
            raise ServeError(reason(errors.read().decode(errors="replace"), listen))
    # The daemon writes its pidfile after the fork, maybe after its parent exited.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise ServeError(f"nbdkit started but wrote no pid to {pidfile}") from None
            time.sleep(0.01)
