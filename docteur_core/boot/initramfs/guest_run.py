"""Run the commands named on the kernel command line; print their output.

This runs inside the guest, under `python3 -S`, started by init once
/dev/vda exists. The `docteur.cmds=` parameter of /proc/cmdline holds the
commands (see `decode_commands`): each is the list of arguments of a Python
to run, e.g. `-m docteur_core.reader.guest /dev/vda --mode fast cat index.html`.
Commands run one after the other, each in its own interpreter, so that one
failing (or crashing) cannot change what the next one sees.

The serial console is a text channel that the kernel, the tty layer and
QEMU may each touch, so the output crosses it in base64, between markers
that carry its length and SHA-256: the host (docteur_core/boot/runner.py) decodes
it and knows the bytes arrived intact.

    =====DOCTEUR-BEGIN n=====
    base64 of stdout
    =====DOCTEUR-STDERR n=====
    base64 of stderr
    =====DOCTEUR-END n status=S out=LEN:SHA256 err=LEN:SHA256 time=SECONDS=====
    ...
    =====DOCTEUR-DONE count=N start=UPTIME end=UPTIME=====

A long-running command, the web server (`-m docteur_core.web.guest`, for
`docteur boot --http`), runs live instead: after a `=====DOCTEUR-LIVE n
init=UPTIME runner=UPTIME now=UPTIME=====` line (when user space started,
when this runner did, and now) its stderr and stdout are the console itself (its start line, then
one access-log line per request, read by the host as they come), until
it stops (then its END marker, with nothing captured).

Only built-in modules and os are used (and the reader, for the commands
that run it): nothing here may depend on what the initramfs's trimmed
standard library happens to hold. Annotations are builtins, evaluated at
no cost; the others are strings, their names imported for checkers only
(`TYPE_CHECKING`, a constant: typing's import would cost more than this file).
"""

import binascii
import os
import sys
import time
import zlib

import _sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    Main = Callable[[list[str] | None], int]

PYTHON = "/usr/bin/python3"
SCRATCH = "/tmp"


def emit(text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    while data:
        data = data[os.write(1, data):]


def base64_lines(data: bytes) -> bytes:
    return b"".join(binascii.b2a_base64(data[start:start + 57])
                    for start in range(0, len(data), 57))


def decode_commands(text: str) -> list[list[str]]:
    """The inverse of docteur_core.boot.runner.encode_commands.

    The kernel command line is short (2048 bytes on x86) and the commands
    repeat themselves, so they travel zlib-compressed, in URL-safe base64,
    as a list of length-prefixed words: `N` and a newline (words in the
    command), then, for each word, its length, a newline and its bytes.
    """
    data = zlib.decompress(binascii.a2b_base64(text.replace("-", "+").replace("_", "/")))
    commands = []
    position = 0
    while position < len(data):
        end = data.index(b"\n", position)
        count, position = int(data[position:end]), end + 1
        argv = []
        for _ in range(count):
            end = data.index(b"\n", position)
            length, position = int(data[position:end]), end + 1
            argv.append(data[position:position + length].decode("utf-8", "surrogateescape"))
            position += length
        commands.append(argv)
    return commands


def commands_from_cmdline(cmdline: str) -> list[list[str]]:
    for word in cmdline.split():
        if word.startswith("docteur.cmds="):
            return decode_commands(word[len("docteur.cmds="):])
    return []


READER = ["-m", "docteur_core.reader.guest"]
WEB = ["-m", "docteur_core.web.guest"]


def _preloaded_reader() -> "Main":
    """docteur_core.reader.guest's main, with the modules its verbs use
    imported once.

    Starting an interpreter and importing the reader costs about a second
    per command under TCG; a fork of an interpreter that already holds them
    costs nothing, and still gives each command its own process.
    """
    import docteur_core.reader.guest as guest
    import docteur_core.reader.image  # noqa: F401  (what guest.main imports lazily)
    import docteur_core.reader.commands  # noqa: F401
    import docteur_core.errors  # noqa: F401
    return guest.main


def _preloaded_web() -> "Main":
    """docteur_core.web.guest's main, with the modules the server needs at start."""
    import docteur_core.web.guest as guest
    import docteur_core.web.start  # noqa: F401
    import docteur_core.web.server  # noqa: F401
    import docteur_core.web.site  # noqa: F401
    import docteur_core.reader.image  # noqa: F401
    return guest.main


def _child(argv: list[str]) -> "NoReturn":
    """In the forked child: run the command, never return."""
    status = 0
    try:
        preloaded = {tuple(WEB): _preloaded_web, tuple(READER): _preloaded_reader}
        load = preloaded.get(tuple(argv[:2]))
        if load is not None:
            entry = load()
            sys.argv = [argv[1]] + argv[2:]
            try:
                status = entry(argv[2:]) or 0
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        else:
            os.execv(PYTHON, [PYTHON, "-S"] + argv)
    except BaseException as exc:
        try:  # a crash shows as one, with its traceback, like a fresh python's
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            os.write(2, ("guest_run: %s: %r\n" % (" ".join(argv), exc)).encode())
        finally:
            os._exit(1 if argv[:2] in (READER, WEB) else 127)  # 127: exec failed
    os._exit(status if isinstance(status, int) and 0 <= status < 256 else 1)


def run(argv: list[str], index: int) -> tuple[int, bytes, bytes]:
    """Run one command with stdout and stderr in files; return (status, out, err).

    `-m docteur_core.reader.guest ARGS` runs the guest entry point's main(ARGS) in a
    fork of this (already loaded) interpreter; anything else is the argument
    list of a fresh `python3 -S`.
    """
    if argv[:2] == WEB:
        return run_live(argv, index)
    out_path = "%s/out.%d" % (SCRATCH, index)
    err_path = "%s/err.%d" % (SCRATCH, index)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out_fd = os.open(out_path, flags, 0o600)
    err_fd = os.open(err_path, flags, 0o600)
    null_fd = os.open("/dev/null", os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(null_fd, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
        except BaseException:
            os._exit(127)
        _child(argv)
    for fd in (out_fd, err_fd, null_fd):
        os.close(fd)
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    with open(out_path, "rb") as f:
        out = f.read()
    with open(err_path, "rb") as f:
        err = f.read()
    os.unlink(out_path)
    os.unlink(err_path)
    return status, out, err


def run_live(argv: list[str], index: int) -> tuple[int, bytes, bytes]:
    """Run the web server with the console as its stdout and stderr, after
    a LIVE marker; return (status, b"", b"") once it stops."""
    init = os.environ.get("DOCTEUR_INIT_UPTIME", "0")
    emit(b"\n=====DOCTEUR-LIVE %d init=%s runner=%.2f now=%.2f=====\n"
         % (index, init.encode(), RUNNER_STARTED, uptime()))
    null_fd = os.open("/dev/null", os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(null_fd, 0)
        except BaseException:
            os._exit(127)
        _child(argv)
    os.close(null_fd)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), b"", b""


def fingerprint(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), _sha256.sha256(data).hexdigest().encode())


def report(index: int, status: int, out: bytes, err: bytes, elapsed: float) -> bytes:
    """The console text for one command's result (pure, so it can be tested)."""
    return b"".join([
        b"\n=====DOCTEUR-BEGIN %d=====\n" % index,
        base64_lines(out),
        b"=====DOCTEUR-STDERR %d=====\n" % index,
        base64_lines(err),
        b"=====DOCTEUR-END %d status=%d out=%s err=%s time=%.3f=====\n"
        % (index, status, fingerprint(out), fingerprint(err), elapsed),
    ])


def done(count: int, started: float = 0.0, finished: float = 0.0) -> bytes:
    """The last marker; the times are the guest's uptime when the runner
    started and when it finished, to tell the boot from the commands."""
    return b"=====DOCTEUR-DONE count=%d start=%.2f end=%.2f=====\n" % (count, started, finished)


def uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


RUNNER_STARTED = 0.0


def main() -> int:
    global RUNNER_STARTED
    started = RUNNER_STARTED = uptime()
    with open("/proc/cmdline") as f:
        commands = commands_from_cmdline(f.read())
    if any(argv[:2] == READER for argv in commands):
        try:
            _preloaded_reader()
        except BaseException:
            pass  # each command will report the error itself
    if any(argv[:2] == WEB for argv in commands):
        try:
            _preloaded_web()
        except BaseException:
            pass
    for index, argv in enumerate(commands, 1):
        begun = time.monotonic()
        status, out, err = run(argv, index)
        emit(report(index, status, out, err, time.monotonic() - begun))
    emit(done(len(commands), started, uptime()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
