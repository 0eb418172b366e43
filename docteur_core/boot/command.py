"""`docteur boot`: read files from an image inside a virtual machine."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import TypeVar

    T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Boot a QEMU guest that reads files from an image (or an NBD export).

    The guest has no file system of its own: it runs `python3 -m
    docteur_core.reader.guest /dev/vda VERB ARGS` on the image, seen as a read-only
    virtio disk served over NBD, and its output is shown here (binary output
    as its size and SHA-256 unless --raw). Several commands can share one boot
    when separated by a ';' word, e.g.

        docteur boot site.img cat index.html ';' ls docs ';' --mode light ls

    The exit status is the first non-zero status of the guest's commands.
    The kernel and the initramfs are built on first use (docteur_core/boot/guest_image.py).

    A web site: with --http [HOST:]PORT the guest runs the web server of
    `docteur http` on its disk instead of commands, and HOST:PORT on this
    machine (HOST 127.0.0.1 by default) is forwarded to it (QEMU's user
    network). Its start line and one access-log line per request show on
    stderr; it serves until Ctrl-C, or `docteur boot --stop` from another
    shell (--stop --http PORT: only that one). A guest keeps the image it
    booted on: rebuild the image, restart the guest to serve the new one.

        docteur boot site.img --http 8080          http://127.0.0.1:8080/
        docteur boot --stop
    """
    parser.add_argument("target", metavar="IMAGE_OR_URI", nargs="?",
                        help="an image file (served with nbdkit for the boot), an NBD URI, "
                             "or an http(s):// URL (served by nbdkit's curl plugin)")
    _add_options(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="VERB [ARGS...]",
                        help="what the guest runs: cat PATH, ls [PATH], stat PATH, tree "
                             "[PATH], info (see `docteur cat --help` and friends)")


MIN_MEMORY_MB = 128  # below this the Debian kernel and python3 do not start


def _memory(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB") from None
    if value < MIN_MEMORY_MB:
        raise argparse.ArgumentTypeError(
            f"{value} MB is too little: the guest needs at least {MIN_MEMORY_MB} MB")
    return value


def _check_guest_command(segment: list[str]) -> None:
    """Refuse a command the guest would refuse, before paying for a boot."""
    from .runner import BootError
    from ..reader.commands import VERBS

    # Options are the guest's to judge (docteur_core/reader/guest.py): skip them as
    # it does, keep the positional words.
    words: list[str] = []
    rest = list(segment)
    while rest:
        word = rest.pop(0)
        if word == "--":
            words += rest
            break
        if word in ("--mode", "--block-size", "--commit") and rest:
            rest.pop(0)
        elif not word.startswith("--") or word == "-":
            words.append(word)
    if not words or words[0] not in VERBS:
        got = f"unknown verb {words[0]!r}" if words else "no verb"
        raise BootError(f"{' '.join(segment) or 'empty command'}: {got} "
                        f"(one of: {', '.join(VERBS)})")
    verb, args = words[0], words[1:]
    _, least, most, usage = VERBS[verb]
    if not least <= len(args) <= most:
        raise BootError(f"{' '.join(segment)}: usage: {verb} {usage}".rstrip())


def _add_options(parser: argparse.ArgumentParser) -> None:
    from ..serve.nbdkit import SERVERS
    from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES
    from .runner import ACCELS, DEFAULT_TIMEOUT

    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                        help="the reader's mode in the guest: " + MODE_HELP)
    parser.add_argument("--server", choices=SERVERS, default="docteur",
                        help="serve an image file with the project's plugin (docteur, the "
                             "default) or nbdkit's file plugin (file)")
    parser.add_argument("--accel", choices=ACCELS, default="tcg",
                        help="QEMU accelerator (default: tcg; KVM fails on some hosts)")
    parser.add_argument("--memory", type=_memory, default=256, metavar="MB",
                        help="the guest's memory (default: %(default)s MB; outputs are held "
                             "in it; below about 128 MB the guest does not start)")
    from .. import options

    options.add_trust_arguments(parser)
    parser.add_argument("--timeout", type=options.seconds, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the guest (default: %(default)s)")
    parser.add_argument("--raw", action="store_true",
                        help="write the guest's output exactly, binary included")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not report the steps on stderr")
    parser.add_argument("--http", metavar="[HOST:]PORT", type=_forward, default=None,
                        help="run the web server in the guest, HOST:PORT here forwarded to "
                        "it (HOST: 127.0.0.1 unless given), until Ctrl-C or --stop")
    parser.add_argument("--listing", action="store_true",
                        help="with --http: list a folder without index.html (default: 404)")
    parser.add_argument("--stop", action="store_true",
                        help="stop the guests serving --http (with --http PORT: that one)")
    from .solo5.command import add_options as add_solo5_options
    add_solo5_options(parser)


def _leading_options(args: argparse.Namespace) -> None:
    """Options between IMAGE and VERB (`boot IMG --mode light cat x`) are boot's.

    argparse's REMAINDER keeps them with the command, so parse them here, up
    to the first word that is not an option: later ones belong to the guest.
    """
    parser = argparse.ArgumentParser(prog="docteur boot", add_help=False)
    _add_options(parser)
    takes_value = {s for a in parser._actions if a.nargs is None and a.option_strings
                   and not isinstance(a, (argparse._StoreTrueAction,))
                   for s in a.option_strings}
    words = list(args.command)
    leading: list[str] = []
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        leading.append(word)
        if word in takes_value and words:
            leading.append(words.pop(0))
    parser.parse_args(leading, namespace=args)
    args.command = words


def _forward(text: str) -> tuple[str, int]:
    from ..web.server import parse_listen

    try:
        host, port = parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if port == 0:
        raise argparse.ArgumentTypeError("a forwarded port must be given (not 0)")
    return host, port


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not args.quiet:
            print(f"docteur boot: {message}", file=sys.stderr, flush=True)
    return log


def _with_signals(work: Callable[[], T]) -> T:
    """Run work(); SIGTERM and SIGHUP stop QEMU and nbdkit as Ctrl-C does."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return work()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_is_image(target: str) -> None:
    """A local file that is no image at all is refused in one line naming
    it, before a guest is built or a server started (as every command
    refuses it: `format.layout.not_an_image`). A URI is the server's."""
    import os

    if "://" in target or not os.path.isfile(target):
        return
    from ..blockdev.block import ByteReader
    from ..blockdev.device import open_device
    from ..errors import DocteurError, NotAnImage
    from ..format import layout

    device = open_device(target)
    try:
        layout.check_is_image(ByteReader(device).pread, device.capacity)
    except NotAnImage as exc:
        raise DocteurError(f"{target}: {exc}") from None
    finally:
        device.close()


def _pin(args: argparse.Namespace) -> str | None:
    """The commit the guest must find on its disk, decided on the host:
    `--commit`; else, under `--allowed-signers`, the commit the host proved
    signed (the guest has no ssh-keygen); else a local image's own header,
    read now (so a server or a file swapped during the boot is caught);
    else the id an http(s) URL ending in `ID.img` names. An NBD URI without
    any of these is checked by the guest against the header it reads."""
    import os

    pinned: str | None = args.commit
    if args.allowed_signers is not None:
        from ..trust import open_image

        with open_image(args.target, args) as image:  # pinned too, if --commit
            pinned = image.store.commit_id.hex()
        _log(args)(f"commit {pinned} is signed by an allowed key; the guest is pinned to it")
        return pinned
    if pinned:
        return pinned
    if "://" not in args.target and os.path.isfile(args.target):
        from ..format import layout

        with open(args.target, "rb") as f:
            head = f.read(layout.COMMIT_ID_SIZE)
        if len(head) == layout.COMMIT_ID_SIZE:
            _log(args)(f"pinning commit {head.hex()} (the image's header)")
            return head.hex()
        return None
    from ..format.pin import pin_of_url

    return pin_of_url(args.target)


def _run_http(args: argparse.Namespace) -> int:
    """`docteur boot IMAGE --http [HOST:]PORT`: the guest's web server."""
    from . import webstate
    from .runner import BootError, serve_http, web_command

    if args.command:
        raise BootError(f"--http runs the web server, not {' '.join(args.command)!r}: "
                        "give no command")
    if args.solo5:
        raise BootError("--http boots QEMU, not a Solo5 guest")
    host, port = args.http
    _check_is_image(args.target)
    args.commit = _pin(args)
    command = web_command(commit=args.commit, verify=args.verify, listing=args.listing,
                          mode=args.mode)
    log = _log(args)
    url = f"http://{host}:{port}/"

    def ready(text: str) -> None:
        print(f"docteur boot: the guest serves {args.target} on {url} "
              f"({text.split(' (', 1)[1].split(')')[0] if ' (' in text else 'started'}); "
              "Ctrl-C or `docteur boot --stop` stops it", file=sys.stderr, flush=True)

    def line(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def work() -> int:
        with webstate.registered(host, port, args.target):
            try:
                return serve_http(args.target, command, host, port, server=args.server,
                                  accel=args.accel, memory=args.memory, timeout=args.timeout,
                                  log=log, commit=args.commit, ready=ready, line=line)
            except KeyboardInterrupt:
                log("stopped the guest")
                return 0

    return _with_signals(work)


def run(args: argparse.Namespace) -> int:
    from .runner import BootError, boot, print_results, reader_command, split_commands

    _leading_options(args)
    if args.stop:
        from . import webstate

        return webstate.stop_all(None if args.http is None else args.http[1], _log(args))
    if args.target is None:
        raise BootError("an IMAGE_OR_URI is needed (or --stop)")
    if args.http is not None:
        return _run_http(args)
    if not args.command:
        raise BootError("no command for the guest (e.g. `cat PATH` or `ls`)")
    if args.no_server and not args.solo5:
        raise BootError("--no-server goes with --solo5 (QEMU boots need a server)")
    _check_is_image(args.target)
    if args.solo5:
        from .solo5 import command as solo5_command
        if args.allowed_signers is not None:  # the guest cannot: checked here, pinned
            args.commit = _pin(args)
            args.allowed_signers = None
        return _with_signals(lambda: solo5_command.run(args, _log(args)))
    segments = split_commands(args.command)
    for segment in segments:
        _check_guest_command(segment)
    args.commit = _pin(args)
    commands = [reader_command(segment, args.mode, commit=args.commit, verify=args.verify)
                for segment in segments]

    result = _with_signals(lambda: boot(
        args.target, commands, server=args.server, accel=args.accel,
        timeout=args.timeout, memory=args.memory, log=_log(args), commit=args.commit))
    print_results(result, raw=args.raw, headers=len(commands) > 1)
    return result.status


COMMANDS = {"boot": (add_arguments, run)}
