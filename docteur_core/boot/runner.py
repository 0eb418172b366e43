"""Boot a guest that reads files from an image over NBD.

The host side of the guest: serve the image with nbdkit (the project's plugin,
or nbdkit's own file plugin to compare), boot `qemu-system-x86_64` with the
export as a read-only virtio disk and the kernel and initramfs that
guest_image.py makes, and read the results off the serial console.

One boot can run several commands (a boot costs seconds under TCG, a
command a fraction of one). Each command is the argument list of a Python
run inside the guest, normally `-m docteur_core.reader.guest /dev/vda --mode M VERB
ARGS`; the list travels on the kernel command line (`docteur.cmds=`), and
each command's output comes back between markers (see initramfs/guest_run.py),
base64-encoded with its length and SHA-256, so that what this module
returns is exactly the bytes the guest wrote, or an error.

Every process started here is in its own process group, dies with this
process (PR_SET_PDEATHSIG, nbdkit's --exit-with-parent), and is stopped in a
`finally`: after a result, an error, a timeout or Ctrl-C nothing is left
running.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Callable, Sequence

from .. import children
from ..errors import DocteurError
from ..reader.vocabulary import DEFAULT_MODE
from ..serve import nbdkit
from ..serve.nbdkit import Listen, Server, ServeError

if TYPE_CHECKING:
    from .guest_image import Guest

GUEST_DEVICE = "/dev/vda"
ACCELS = ("tcg", "kvm")
# x86's COMMAND_LINE_SIZE, less room for the fixed part.
MAX_COMMAND_LINE = 2048
BASE_APPEND = "console=ttyS0 quiet loglevel=1 panic=-1"
DEFAULT_TIMEOUT = 300.0
MARK = "====="

Log = Callable[[str], None]


class BootError(DocteurError):
    """The guest could not be booted, or did not report its results."""


@dataclass
class CommandResult:
    """What one command wrote in the guest, byte for byte, and its status."""

    argv: list[str]
    status: int
    stdout: bytes
    stderr: bytes
    seconds: float  # measured inside the guest


@dataclass
class BootResult:
    results: list[CommandResult]
    seconds: float                      # QEMU start to QEMU exit
    console: str = field(repr=False)    # the whole serial console, for diagnosis
    runner_started: float = 0.0         # guest uptime when the commands began
    runner_finished: float = 0.0        # ... and when they were all done

    @property
    def status(self) -> int:
        """The first non-zero status, or 0."""
        return next((r.status for r in self.results if r.status), 0)


def _quiet(_: str) -> None:
    pass


# --- commands and the console protocol (pure) ------------------------------

def reader_command(args: Sequence[str], mode: str | None = None, *,
                   commit: str | None = None, verify: bool = True) -> list[str]:
    """The Python arguments that run `docteur_core.reader.guest` on the guest's disk.

    `args` is what follows DEVICE on the guest entry point's command line
    (`[--mode M] VERB ARGS...`); `mode` is used unless `args` name one.
    `commit` pins the commit the guest must find on its disk (`--commit`);
    `verify=False` passes `--no-verify`.
    """
    args = list(args)
    if mode and not (args and args[0].startswith("--mode")):
        args = ["--mode", mode] + args
    if not verify:
        args = ["--no-verify"] + args
    if commit:
        args = ["--commit", commit] + args
    return ["-m", "docteur_core.reader.guest", GUEST_DEVICE] + args


def encode_commands(commands: Sequence[Sequence[str]]) -> str:
    """Commands as one kernel parameter value (initramfs/guest_run.py decodes it).

    Length-prefixed words (`N` and a newline, then for each word its length,
    a newline and its bytes),
    zlib-compressed (commands repeat themselves; the command line is short),
    in URL-safe base64: one word, nothing the kernel's parser would split.
    """
    parts: list[bytes] = []
    for argv in commands:
        parts.append(b"%d\n" % len(argv))
        for arg in argv:
            raw = os.fsencode(arg)
            parts.append(b"%d\n" % len(raw) + raw)
    return base64.urlsafe_b64encode(zlib.compress(b"".join(parts), 9)).decode()


def kernel_append(commands: Sequence[Sequence[str]], net: bool = False) -> str:
    """The kernel command line that asks the guest to run `commands`
    (`net`: with its network card up, initramfs/init)."""
    append = (f"{BASE_APPEND}{' docteur.net=1' if net else ''} "
              f"docteur.cmds={encode_commands(commands)}")
    if len(append) >= MAX_COMMAND_LINE:
        raise BootError(f"the commands do not fit on the kernel command line "
                        f"({len(append)} bytes, at most {MAX_COMMAND_LINE - 1}): "
                        f"run fewer at a time")
    return append


_END = re.compile(
    r"=====DOCTEUR-END (\d+) status=(-?\d+) out=(\d+):([0-9a-f]{64}) "
    r"err=(\d+):([0-9a-f]{64}) time=([0-9.]+)=====")
_DONE = re.compile(r"=====DOCTEUR-DONE count=(\d+) start=([0-9.]+) end=([0-9.]+)=====")
_FAILED = re.compile(r"=====DOCTEUR-FAILED (.*)=====")


def _decode(lines: list[str], length: int, sha256: str, what: str) -> bytes:
    try:
        data = base64.b64decode("".join(lines), validate=True)
    except ValueError as exc:
        raise BootError(f"garbled {what} on the console: {exc}") from None
    if len(data) != length or hashlib.sha256(data).hexdigest() != sha256:
        raise BootError(f"{what} damaged on the console "
                        f"({len(data)} bytes where the guest sent {length})")
    return data


def parse_console(console: str, commands: Sequence[Sequence[str]]) -> list[CommandResult]:
    """The results the guest printed, checked against their lengths and digests.

    Raises BootError when the guest reported a failure, or when anything is
    missing or damaged: a partial answer is never returned as a whole one.
    """
    return _parse_console(console, commands)[0]


def _parse_console(console: str, commands: Sequence[Sequence[str]]
                   ) -> tuple[list[CommandResult], tuple[float, float]]:
    results: list[CommandResult] = []
    uptimes = (0.0, 0.0)
    section: list[str] | None = None
    out_lines: list[str] = []
    done = False
    for raw_line in console.splitlines():
        line = raw_line.strip("\r\n ")
        if not line.startswith(MARK):
            if section is not None and line:
                section.append(line)
            continue
        if line.startswith("=====DOCTEUR-BEGIN "):
            out_lines = section = []
        elif line.startswith("=====DOCTEUR-STDERR "):
            out_lines, section = (section if section is not None else []), []
        elif (match := _END.fullmatch(line)) and section is not None:
            index = int(match.group(1))
            if index != len(results) + 1 or index > len(commands):
                raise BootError(f"unexpected result {index} on the console")
            stdout = _decode(out_lines, int(match.group(3)), match.group(4),
                             f"output of command {index}")
            stderr = _decode(section, int(match.group(5)), match.group(6),
                             f"error output of command {index}")
            results.append(CommandResult(list(commands[index - 1]), int(match.group(2)),
                                         stdout, stderr, float(match.group(7))))
            section = None
        elif match := _DONE.fullmatch(line):
            done = int(match.group(1)) == len(commands)
            uptimes = (float(match.group(2)), float(match.group(3)))
        elif match := _FAILED.fullmatch(line):
            raise BootError(f"the guest failed: {match.group(1)}\n{_tail(console)}")
    if not done or len(results) != len(commands):
        raise BootError(f"the guest reported {len(results)} of {len(commands)} results "
                        f"and {'' if done else 'no '}end marker\n{_tail(console)}")
    return results, uptimes


def _tail(console: str, lines: int = 25) -> str:
    kept = console.replace("\r", "").strip("\n").splitlines()[-lines:]
    if not kept:
        return "(nothing on the console)"
    return "last console lines:\n" + "\n".join("  | " + line for line in kept)


def nbd_drive_options(uri: str) -> dict[str, str]:
    """QEMU `-drive` options for an `nbd://` or `nbd+unix://` URI, read by
    the NBD client's own parser (`blockdev.nbd_client.parse_nbd_uri`), so
    `docteur boot` takes and refuses the URIs `docteur cat` does."""
    from ..blockdev.nbd_client import parse_nbd_uri
    from ..blockdev.nbd_protocol import NbdError

    try:
        address = parse_nbd_uri(uri)
    except NbdError as exc:
        raise BootError(str(exc)) from None
    if address.socket is not None:
        options = {"server.type": "unix", "server.path": address.socket}
    else:
        options = {"server.type": "inet", "server.host": str(address.host),
                   "server.port": str(address.port)}
    if address.export:
        options["export"] = address.export
    return options


def drive_option(options: dict[str, str]) -> str:
    """`-drive` value for a read-only virtio disk on an NBD export."""
    for value in options.values():
        if "," in value:
            raise BootError(f"commas are not supported in NBD addresses: {value!r}")
    spelled = ",".join(f"{k}={v}" for k, v in options.items())
    return f"driver=nbd,{spelled},if=virtio,readonly=on"


# --- processes ----------------------------------------------------------------

def image_server(image: Path, kind: str = "docteur") -> Server:
    """nbdkit serving `image` on a free loopback port, for the time of a boot.

    No cache filter: a boot reads each sector once or twice, through the
    guest's own page cache.
    """
    if not Path(image).is_file():
        raise BootError(f"no such image: {image}")
    return Server(lambda listen, pidfile: nbdkit.command(
        image, listen, server=kind, cache_size=None, exit_with_parent=True, pidfile=pidfile),
        Listen(port=0))


def prepare_guest(log: Log = _quiet, cache: Path | None = None) -> Guest:
    """Kernel and initramfs (guest_image.py), built or taken from the cache."""
    from . import guest_image
    try:
        return guest_image.prepare_guest(cache, log)
    except guest_image.GuestBuildError as exc:
        raise BootError(f"cannot build the guest: {exc}") from None


def qemu_command(kernel: Path, initrd: Path, drive: str, append: str,
                 accel: str = "tcg", memory: int = 256,
                 forward: tuple[str, int, int] | None = None) -> list[str]:
    """QEMU's command line; `forward` (host address, host port, guest port):
    a virtio network card on QEMU's user network, that host port forwarded
    to the guest's."""
    if accel not in ACCELS:
        raise BootError(f"unknown accelerator {accel!r} (one of {', '.join(ACCELS)})")
    cmd = ["qemu-system-x86_64", "-accel", accel, "-m", str(memory),
           "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", append, "-drive", drive]
    if forward is not None:
        host, port, guest_port = forward
        for value in (host,):
            if "," in value or ":" in value or "-" in value:
                raise BootError(f"{value!r} cannot be a forwarded address (an IPv4 "
                                "address or a name is needed)")
        cmd += ["-netdev", f"user,id=net0,hostfwd=tcp:{host}:{port}-:{guest_port}",
                "-device", "virtio-net-pci,netdev=net0"]
    return cmd


def run_qemu(cmd: list[str], timeout: float, log: Log = _quiet) -> tuple[str, float]:
    """Run QEMU until it exits; return its serial console and the time it took."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        proc = children.start(cmd, error=BootError, hint="install Debian's qemu-system-x86",
                              stdout=subprocess.PIPE, stderr=errors)
        chunks: list[bytes] = []
        out = proc.stdout
        assert out is not None  # stdout=PIPE
        try:
            deadline = started + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BootError(f"the guest did not finish within {timeout:.0f} s\n"
                                    + _tail(b"".join(chunks).decode(errors="replace")))
                ready, _, _ = select.select([out], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(out.fileno(), 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BootError(f"QEMU did not exit within {timeout:.0f} s") from None
        finally:
            children.stop(proc)
        console = b"".join(chunks).decode(errors="replace")
        if status != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
            raise BootError(f"QEMU exited with status {status}: {message}"
                            + (f"\n{_tail(console)}" if console.strip() else ""))
    return console, time.monotonic() - started


class _Drive:
    """The guest's disk for the time of a boot: an NBD URI as it is, or an
    image (a file, an http(s) URL) served by nbdkit, stopped on exit."""

    def __init__(self, target: str | Path, server: str, commit: str | None, log: Log) -> None:
        self.target = str(target)
        self.server = server
        self.commit = commit
        self.log = log
        self.nbd: Server | None = None
        self.remote = self.target[:6].lower().startswith(("http:", "https:"))
        self.uri_drive = (drive_option(nbd_drive_options(self.target))
                          if "://" in self.target and not self.remote else None)
        if self.uri_drive is None and not self.remote and not Path(self.target).is_file():
            what = ("is a directory, not an image" if Path(self.target).is_dir()
                    else "no such image file")
            raise BootError(f"{self.target}: {what}")

    def __enter__(self) -> str:
        """The `-drive` option."""
        if self.uri_drive is not None:
            self.log(f"using the NBD export {self.target}")
            return self.uri_drive
        server: Server
        if self.remote:  # nbdkit's curl plugin, the image checked by range reads first
            from ..serve.remote import remote_server
            server = remote_server(self.target, commit=self.commit)
        else:
            server = image_server(Path(self.target), self.server)
        self.nbd = server
        try:
            server.start()
        except ServeError as exc:
            self.nbd = None
            raise BootError(f"nbdkit could not serve {self.target}: {exc}") from None
        plugin = ("nbdkit's curl plugin" if self.remote else
                  "the docteur plugin" if self.server == "docteur" else "nbdkit's file plugin")
        self.log(f"serving {self.target} with {plugin} on {server.uri}")
        return drive_option(nbd_drive_options(server.uri))

    def __exit__(self, *exc: object) -> None:
        if self.nbd:
            self.nbd.stop()


def boot(target: str | Path, commands: Sequence[Sequence[str]], *,
         server: str = "docteur", accel: str = "tcg", timeout: float = DEFAULT_TIMEOUT,
         memory: int = 256, log: Log = _quiet, cache: Path | None = None,
         commit: str | None = None) -> BootResult:
    """Boot a guest on `target` (an image file, an NBD URI or an http(s) URL
    served by nbdkit's curl plugin for the boot), run `commands`.

    Each command is the Python argument list to run in the guest (see
    `reader_command`). Serves an image with nbdkit (`server`: "docteur" for
    the project's plugin, "file" for nbdkit's file plugin) for the time of
    the boot. `commit`: the commit an http(s) image must hold before it is
    served (the guest's own `--commit` checks it again on its disk).
    """
    if not commands:
        raise BootError("nothing to run in the guest")
    append = kernel_append(commands)
    drive_of = _Drive(target, server, commit, log)
    guest = prepare_guest(log, cache)
    if guest.built:
        log(f"built the guest (kernel {guest.kernel_version}) in {guest.seconds:.1f} s")
    with drive_of as drive:
        log(f"booting the guest ({accel}, {len(commands)} command"
            f"{'' if len(commands) == 1 else 's'})")
        console, seconds = run_qemu(qemu_command(guest.kernel, guest.initrd, drive, append,
                                                 accel, memory), timeout, log)
    results, (started, finished) = _parse_console(console, commands)
    log(f"the guest powered off after {seconds:.1f} s (its commands ran from "
        f"{started:.1f} s to {finished:.1f} s of its uptime)")
    return BootResult(results, seconds, console, started, finished)


GUEST_HTTP_PORT = 80
_LIVE = re.compile(r"=====DOCTEUR-LIVE (\d+) init=([0-9.]+) runner=([0-9.]+) "
                   r"now=([0-9.]+)=====")


def web_command(*, commit: str | None, verify: bool = True, listing: bool = False,
                mode: str = DEFAULT_MODE, quiet: bool = False) -> list[str]:
    """The Python arguments that run the web server on the guest's disk."""
    args = ["-m", "docteur_core.web.guest", GUEST_DEVICE, "--listen",
            f"0.0.0.0:{GUEST_HTTP_PORT}", "--mode", mode]
    if commit:
        args += ["--commit", commit]
    if not verify:
        args.append("--no-verify")
    if listing:
        args.append("--listing")
    if quiet:
        args.append("-q")
    return args


def check_port_free(host: str, port: int) -> None:
    """A host port QEMU could not forward, refused in one line before a boot."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BootError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BootError(f"cannot listen on {host}:{port}: the port is taken (another "
                                "server is on it); choose another with --http "
                                "[HOST:]PORT") from None
            raise BootError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve_http(target: str | Path, command: list[str], host: str, port: int, *,
               server: str = "docteur", accel: str = "tcg", memory: int = 256,
               timeout: float = DEFAULT_TIMEOUT, log: Log = _quiet,
               cache: Path | None = None, commit: str | None = None,
               ready: Callable[[str], None] = _quiet,
               line: Callable[[str], None] = _quiet) -> int:
    """Boot a guest that runs the web server `command` (`web_command`) on
    `target`, `host:port` forwarded to it; call `ready(its start line)`
    once it listens (within `timeout` seconds of the boot), then `line`
    for each line it writes (its access log), until KeyboardInterrupt (the
    guest and nbdkit are then stopped) or the guest stops (BootError, with
    the console's last lines)."""
    check_port_free(host, port)
    append = kernel_append([command], net=True)
    drive_of = _Drive(target, server, commit, log)
    guest = prepare_guest(log, cache)
    if guest.built:
        log(f"built the guest (kernel {guest.kernel_version}) in {guest.seconds:.1f} s")
    with drive_of as drive, tempfile.TemporaryFile() as errors:
        cmd = qemu_command(guest.kernel, guest.initrd, drive, append, accel, memory,
                           forward=(host, port, GUEST_HTTP_PORT))
        log(f"booting the guest ({accel}), {host}:{port} forwarded to its port "
            f"{GUEST_HTTP_PORT}")
        proc = children.start(cmd, error=BootError, hint="install Debian's qemu-system-x86",
                              stdout=subprocess.PIPE, stderr=errors)
        try:
            return _follow(proc, errors, timeout, ready, line, log)
        finally:
            children.stop(proc)


def _follow(proc: subprocess.Popen[bytes], errors: IO[bytes], timeout: float,
            ready: Callable[[str], None], line: Callable[[str], None],
            log: Log = _quiet) -> int:
    """Read the console of a live guest (see `serve_http`)."""
    booted = time.monotonic()
    deadline = booted + timeout
    live = started = False
    live_at = booted
    user_space = 0.0  # seconds from the guest's user space start to the LIVE line
    to_runner = 0.0   # ... to the runner's start (modules, disk, network, Python)
    pending = b""
    seen: list[str] = []
    assert proc.stdout is not None  # started with stdout=PIPE
    fd = proc.stdout.fileno()
    while True:
        wait = 1.0 if started else max(0.0, min(1.0, deadline - time.monotonic()))
        if not started and time.monotonic() >= deadline:
            raise BootError(f"the guest's server did not start within {timeout:.0f} s\n"
                            + _tail("\n".join(seen)))
        ready_fds, _, _ = select.select([fd], [], [], wait)
        if not ready_fds:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            status = proc.wait()
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
            raise BootError(f"the guest stopped (QEMU exit status {status}"
                            + (f": {message}" if message else "") + ")\n"
                            + _tail("\n".join(seen)))
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            text = raw.decode(errors="replace").strip("\r")
            seen.append(text)
            del seen[:-50]
            if not live:
                match = _LIVE.fullmatch(text.strip())
                live = match is not None
                live_at = time.monotonic()
                if match:
                    user_space = float(match.group(4)) - float(match.group(2))
                    to_runner = float(match.group(3)) - float(match.group(2))
                if _FAILED.fullmatch(text.strip()):
                    raise BootError(f"the guest failed: {text.strip()}\n"
                                    + _tail("\n".join(seen)))
                continue
            if text.startswith(MARK):
                raise BootError("the guest's server stopped\n" + _tail("\n".join(seen)))
            if not started and " on http://" in text:
                started = True
                now = time.monotonic()
                log(f"the guest's server listens {now - booted:.1f} s after QEMU started, "
                    f"{user_space + now - live_at:.2f} s after the guest's user space did "
                    f"({to_runner:.2f} s to its runner: modules, disk, network, Python; "
                    f"{user_space - to_runner:.2f} s of imports; {now - live_at:.2f} s to "
                    "open the image and listen)")
                ready(text)
            elif not started and text.startswith("docteur http: "):
                raise BootError(f"the guest's server did not start: {text[14:]}")
            elif text:
                line(text)


# --- showing results ------------------------------------------------------------

def is_text(data: bytes) -> bool:
    """Whether bytes can go to a terminal as they are: UTF-8, no NUL."""
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def describe_binary(data: bytes) -> str:
    """How a binary output is shown: its size and SHA-256."""
    return f"binary: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}\n"


def shown(data: bytes) -> bytes:
    """The output as the runner shows it: text as is, binary as a digest."""
    return data if is_text(data) else describe_binary(data).encode()


def split_commands(words: Sequence[str], separator: str = ";") -> list[list[str]]:
    """`ls ; cat a` (as separate words) -> [["ls"], ["cat", "a"]]."""
    commands: list[list[str]] = [[]]
    for word in words:
        if word == separator:
            commands.append([])
        else:
            commands[-1].append(word)
    if any(not c for c in commands):
        raise BootError("empty command (nothing between two ';')")
    return commands


def print_results(result: BootResult, raw: bool = False, headers: bool = False,
                  out: BinaryIO | None = None, err: BinaryIO | None = None) -> None:
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    for item in result.results:
        if headers:
            shown_args = " ".join(item.argv[3:] if item.argv[:2] == ["-m", "docteur_core.reader.guest"]
                                  else item.argv)
            out.write(f"--- {shown_args} (status {item.status}, "
                      f"{item.seconds:.2f} s in the guest)\n".encode())
        out.write(item.stdout if raw else shown(item.stdout))
        out.flush()
        err.write(item.stderr)
        err.flush()
