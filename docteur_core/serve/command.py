"""`docteur serve` and `docteur plugin-path`: an image over NBD, read-only."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import NoReturn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Serve an image (or a folder of *.img) over NBD, read-only, with nbdkit.

    An image file: docteur checks it (--verify, as `docteur verify --quick`
    by default), listens, and hands each client to an nbdkit of its own
    (`nbdkit --single`, its file plugin reading the checked file): every
    byte is served in C, as fast as nbdkit's file plugin. A folder, and an
    image with --no-cache, are served by `nbdkit python PLUGIN` (the
    project's plugin, see `docteur plugin-path`). A refused image, a taken
    port or a missing nbdkit is one line and exit status 1.

    Prints the NBD URI clients should use on stdout (nbd://127.0.0.1:10809/
    by default: loopback only; --ip 0.0.0.0 for every address). Like nbdkit,
    it then goes to the background (stop it with `kill $(cat PIDFILE)` or
    the pid it prints); with --foreground it stays attached and Ctrl-C stops
    it and everything it started (open connections included).

    Rebuilding while serving (`docteur make site disk.img` again, or `mv
    new.img disk.img`): clients already connected keep reading the image
    they opened, to the end; the next client to connect waits while the new
    file is checked, then gets it. A replacement that fails its check (or
    holds another commit than --commit) is refused: new clients are told
    why and what to do (docteur's clients print it; qemu and libnbd show the
    server's message) until a good image is put there. See docs/serving.md.

    A URL (http:// or https://, presigned query strings kept as they are):
    nbdkit's curl plugin fetches only the ranges clients read, its cache
    filter keeps them in a sparse file in --cache-dir (default $TMPDIR, else
    /var/tmp; bounded by --cache-size), deleted when nbdkit exits. An origin
    that refuses HEAD (an S3 URL presigned for GET only), which the curl
    plugin needs for the size, is read by the docteur plugin with range
    GETs instead, behind the same cache. The check
    before serving cannot hash the whole image without downloading it, so
    for a URL --verify quick reads only the header, the IDX's head and the
    commit object (SHA-1 checked): a few KiB. --verify full runs `docteur
    verify` over HTTP (the image downloaded once). The object's ETag (else Last-Modified) is
    pinned: nbdkit sends it with every request (If-Match), so an object
    replaced at the origin makes reads fail rather than mix two images.
    The export's description names the commit. An https URL is served over
    https only (a redirect to http is refused), and an origin sending
    neither ETag nor Last-Modified only under a pin (below).

    Pin: --commit ID is the commit the image must hold; another one is
    refused before serving (one line, exit status 1), and for an image
    file a replacement holding another one is refused too. A URL whose
    last segment is ID.img (40 hex digits) pins ID unless --commit says
    otherwise. The commit served (the pinned one, else the header's) is
    printed on stderr with the client command that pins it, e.g.
    `docteur cat --commit ID nbd://127.0.0.1:10809/ PATH`: an origin or a
    file can change, a client that pins the commit is not fooled.
    """
    from .. import options
    from .nbdkit import DEFAULT_CACHE_SIZE, DEFAULT_IP, DEFAULT_PORT, VERIFY_LEVELS
    from .options import cache_size

    parser.add_argument("target", metavar="IMAGE_OR_DIR_OR_URL",
                        help="an image file, a folder whose *.img files become exports "
                             "named without .img, or an http(s):// URL of an image (served "
                             "lazily by nbdkit's curl plugin)")
    where = parser.add_argument_group("where it listens")
    where.add_argument("--ip", default=DEFAULT_IP, metavar="ADDR",
                       help=f"address to bind (default {DEFAULT_IP}: this machine only; "
                            "0.0.0.0 or :: for every address)")
    where.add_argument("--port", type=_port, default=DEFAULT_PORT,
                       help=f"TCP port (default {DEFAULT_PORT}, NBD's own)")
    where.add_argument("--unix", metavar="SOCKET", type=Path,
                       help="listen on this Unix socket instead of TCP")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground until Ctrl-C (default: background, "
                             "as nbdkit does)")
    parser.add_argument("--pidfile", type=Path, metavar="FILE",
                        help="write the server's pid there (for an image file "
                             "docteur serve's own, which runs one nbdkit per client; "
                             "nbdkit's otherwise)")
    parser.add_argument("--commit", metavar="ID", type=options.commit_id, default=None,
                        help="the commit the image must hold (40 hex digits): another one "
                             "is refused before serving; an http(s) URL ending in ID.img "
                             "pins ID unless --commit says otherwise")
    parser.add_argument("--verify", choices=VERIFY_LEVELS, default="quick",
                        help="check before serving: quick (default; what `docteur verify "
                             "--quick` checks), full (every object), none (the header)")
    parser.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, metavar="SIZE",
                        type=cache_size,
                        help="for a URL: bound of nbdkit's read cache on disk: bytes, or "
                             "K, M, G, T (powers of 1024) after a whole number, at least 1M, "
                             "e.g. 64M, "
                             f"1G (default {DEFAULT_CACHE_SIZE}: the image's size, at most 1G; "
                             "a bound below the image's size costs speed)")
    parser.add_argument("--no-cache", action="store_true",
                        help="for a URL: no cache filter, every read goes to the origin; "
                             "for an image file: served by the Python plugin (every read "
                             "enters Python: about 0.4x the default's speed)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="for a URL: folder of nbdkit's cache file (default $TMPDIR, "
                             "else /var/tmp); the file is deleted when nbdkit exits")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _stale_socket(path: Path) -> bool:
    """A socket nobody listens on: what nbdkit leaves behind when it is killed."""
    import socket
    import stat

    if not stat.S_ISSOCK(path.lstat().st_mode):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def _header_commit(path: Path) -> str | None:
    """The commit an image file's header names; None if it is no image (or
    unreadable): nbdkit's check then says why, in verify's words."""
    from ..blockdev.block import ByteReader, FileDevice
    from ..errors import DocteurError
    from .imagecheck import check_header

    try:
        device = FileDevice(str(path))
    except DocteurError:
        return None
    try:
        return check_header(ByteReader(device).pread, device.capacity).commit_hex
    except DocteurError:
        return None
    finally:
        device.close()


def client_command(commit: str, uri: str) -> str:
    """The shell command a client runs to read a file of the served image
    with its commit pinned."""
    import shlex

    return f"docteur cat --commit {commit} {shlex.quote(uri)} PATH"


def pin_line(commit: str, how: str, uri: str) -> str:
    """What `docteur serve` says about the commit it serves."""
    return (f"docteur serve: commit {commit} ({how}); clients pin it with: "
            + client_command(commit, uri))


def _check_folder_of(option: str, path: Path) -> None:
    """The folder `path` goes in must exist and be writable, and `path` must
    not be a folder: nbdkit would find out only once started (a daemon that
    cannot write its pidfile leaves `serve` waiting for it for two minutes)."""
    from .nbdkit import ServeError

    folder = Path(os.path.abspath(path)).parent
    if path.is_dir():
        raise ServeError(f"{option} {path}: a folder, not a file name")
    if not folder.is_dir():
        raise ServeError(f"{option} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ServeError(f"{option} {path}: the folder {folder} is not writable")


def _check_port(ip: str, port: int) -> None:
    """Bind where nbdkit will (each address `ip` resolves to, with nbdkit's
    SO_REUSEADDR and IPV6_V6ONLY) and let go: a taken port or an address
    this machine does not have is one line before the image is checked."""
    import errno
    import socket

    from .nbdkit import ServeError

    try:
        addresses = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--ip {ip}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(f"{ip} port {port} is already in use (another server "
                                     "listens there: choose --port or --unix)") from None
                raise ServeError(f"cannot listen on {ip} port {port}: "
                                 f"{exc.strerror or exc}") from None


def _check_cache_folder() -> None:
    """The cache filter's file goes in $TMPDIR (else /var/tmp): a folder
    that is not there is nbdkit's `mkostemp` error after the check."""
    from .nbdkit import ServeError

    folder = os.environ.get("TMPDIR") or "/var/tmp"
    if not os.path.isdir(folder):
        raise ServeError(f"the cache goes in $TMPDIR, {folder}: no such folder "
                         "(--cache-dir DIR to choose another, --no-cache for none)")


def _preflight(args: argparse.Namespace, remote: bool) -> None:
    """What can be checked before the image is and before nbdkit starts."""
    if args.pidfile is not None:
        _check_folder_of("--pidfile", args.pidfile)
    if args.unix is not None:
        _check_folder_of("--unix", args.unix)
    else:
        _check_port(args.ip, args.port)
    if remote and not args.no_cache and args.cache_dir is None:
        _check_cache_folder()  # (only a URL is served through the cache filter)


def _serves_generations(args: argparse.Namespace, target: Path) -> bool:
    """An image file (not a folder), without --no-cache: served by the front
    (front.py), one nbdkit per client, each given the image of its time."""
    return not args.no_cache and not target.is_dir()


def _announce(target: object, uri: str, served: tuple[str, str] | None, *,
              pid: int | None = None,
              whose: str = "pid") -> None:
    """What is served where, on stderr: with `pid`, the background process
    to kill; without, a foreground server that Ctrl-C stops. Then the pin
    line a client can copy (`served`: the checked commit and its words)."""
    if pid is None:
        line = f"docteur serve: serving {target} at {uri}; Ctrl-C stops"
    else:
        line = (f"docteur serve: serving {target} at {uri} ({whose} {pid}; "
                f"stop it with `kill {pid}`)")
    print(line, file=sys.stderr, flush=True)
    if served is not None:
        print(pin_line(*served, uri), file=sys.stderr, flush=True)


def _run_front(args: argparse.Namespace, target: Path, pin: str | None,
               served: tuple[str, str] | None) -> int:
    """`docteur serve IMAGE`: docteur listens, checks, and hands each client
    to an nbdkit of its own (front.py); a rebuilt image is served to new
    clients while connected ones keep the old one."""
    from ..errors import DocteurError
    from .front import Front, listen_sockets, remove_socket
    from .generations import Generations
    from .nbdkit import Listen, ServeError, check_installed
    from .workdir import sweep

    check_installed()
    sweep()  # the folders of --no-cache servers killed before they could clean up
    generations = Generations(str(target), args.verify, pin, "--commit")
    try:
        generations.start()
    except DocteurError as exc:
        raise ServeError(f"{generations.path}: {exc}") from None
    # absolute: the server in the background leaves the current folder (as nbdkit does)
    listen = Listen(args.ip, args.port, args.unix.absolute() if args.unix else None)
    pidfile = args.pidfile.absolute() if args.pidfile is not None else None
    try:
        sockets = listen_sockets(listen)
    except BaseException:
        generations.close()
        raise
    front = Front(generations, sockets)

    if not args.foreground:
        # The sockets listen already (clients wait in their backlog); stdout
        # is written before the fork, so that a failing one leaves no server.
        print(listen.uri, flush=True)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the server, in the background
            status = 0
            try:
                os.setsid()
                os.chdir("/")
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, _interrupt)
                front.serve_forever()
            except KeyboardInterrupt:
                pass
            except BaseException:
                status = 1
            finally:
                try:
                    front.close()
                    remove_socket(listen)
                    if pidfile is not None and pidfile.read_text().strip() == str(os.getpid()):
                        pidfile.unlink()
                except BaseException:
                    pass
                os._exit(status)
        for sock in sockets:
            sock.close()
        generations.close()
        if args.pidfile is not None:
            args.pidfile.write_text(f"{pid}\n")
        _announce(target, listen.uri, served, pid=pid)
        return 0

    previous = {sig: signal.signal(sig, _interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    front.log = sys.stderr
    try:
        if args.pidfile is not None:
            args.pidfile.write_text(f"{os.getpid()}\n")
        print(listen.uri, flush=True)
        _announce(target, listen.uri, served)
        front.serve_forever()
    except KeyboardInterrupt:
        print("docteur serve: stopped", file=sys.stderr)
        return 0
    finally:
        front.close()
        if args.pidfile is not None:
            args.pidfile.unlink(missing_ok=True)
        remove_socket(listen)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0  # (not reached: serve_forever ends only by an exception)


def run(args: argparse.Namespace) -> int:
    from .nbdkit import Listen, Server, ServeError, command, serve_in_background

    from ..blockdev.http_range import is_http_url, shown
    from .imagecheck import check_commit
    from .remote import cache_env, check_cache_dir

    _preflight(args, is_http_url(args.target))
    cache = None if args.no_cache else args.cache_size
    env = cache_env(check_cache_dir(args.cache_dir))
    served: tuple[str, str] | None = None  # (commit, how it was pinned)
    if is_http_url(args.target):
        from .remote import check_remote, url_command

        image = check_remote(args.target, args.verify, args.commit)
        target: str | Path = shown(args.target)
        print(f"docteur serve: {target}: commit {image.commit_hex}, {image.size} bytes "
              f"(checked with {image.requests} range "
              f"request{'' if image.requests == 1 else 's'}, {image.bytes_read} bytes)"
              + ("" if image.pin_header else "; the origin gives no ETag or Last-Modified: "
                 "nbdkit cannot detect a replaced object, clients that pin the commit can"),
              file=sys.stderr, flush=True)
        if image.head is not None:
            print(f"docteur serve: {image.head}: served by docteur's plugin with range GETs "
                  "(nbdkit's curl plugin asks HEAD for the size)", file=sys.stderr, flush=True)
        served = (image.commit_hex, f"pinned by {image.pinned_by}" if image.pinned_by
                  else "the image's header")

        def argv(listen: Listen, pidfile: Path | None,
                 foreground: bool = True) -> list[str]:
            return url_command(image, listen, cache_size=cache, foreground=foreground,
                                exit_with_parent=foreground, pidfile=pidfile)
    else:
        target = Path(args.target)
        if not target.exists():
            raise ServeError(f"{target}: no such image or folder")
        plugin_pin = None
        if target.is_dir():
            if args.commit is not None:
                raise ServeError(f"{target}: --commit pins one image, and a folder serves "
                                 "several (serve the image itself)")
        else:
            found = _header_commit(target)
            if args.commit is not None:
                if found is not None:
                    check_commit(found, args.commit, "--commit", str(target))
                plugin_pin = args.commit
                served = (args.commit, "pinned by --commit")
            elif found is not None:
                served = (found, "the image's header")

        def argv(listen: Listen, pidfile: Path | None,
                 foreground: bool = True) -> list[str]:
            return command(target, listen, verify=args.verify, cache_size=cache,
                           foreground=foreground, exit_with_parent=foreground, pidfile=pidfile,
                           commit=plugin_pin)

    if args.unix is not None and args.unix.exists():
        if not _stale_socket(args.unix):
            raise ServeError(f"{args.unix} already exists (another server's socket?)")
        args.unix.unlink()
    if isinstance(target, Path) and _serves_generations(args, target):  # (not a URL)
        return _run_front(args, target, plugin_pin, served)
    listen = Listen(args.ip, args.port, args.unix)

    if not args.foreground:
        from .workdir import sweep

        sweep()  # foreground servers killed before they could clean up (Server does it too)
        with tempfile.TemporaryDirectory(prefix="docteur-serve-") as tmp:
            pidfile = args.pidfile or Path(tmp) / "nbdkit.pid"
            pidfile.unlink(missing_ok=True)  # a stale one would be read as the new pid
            pid = serve_in_background(argv(listen, pidfile, foreground=False), listen, env=env)
        print(listen.uri, flush=True)
        _announce(target, listen.uri, served, pid=pid, whose="nbdkit pid")
        return 0

    # Ctrl-C, SIGTERM and SIGHUP stop nbdkit cleanly (SIGINT too when it
    # arrives ignored, as for `docteur serve -f &` in a script).
    previous = {sig: signal.signal(sig, _interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    server = Server(argv, listen, env=env)
    try:
        server.start()
        if args.pidfile is not None:
            assert server.proc is not None  # started
            args.pidfile.write_text(f"{server.proc.pid}\n")
        print(listen.uri, flush=True)
        _announce(target, listen.uri, served)
        status = server.wait(log=sys.stderr.buffer)
        raise ServeError(f"nbdkit exited with status {status}")
    except KeyboardInterrupt:
        print("docteur serve: stopped", file=sys.stderr)
        return 0
    finally:
        server.stop()
        if args.pidfile is not None:
            args.pidfile.unlink(missing_ok=True)
        if args.unix is not None and args.unix.is_socket():
            # nbdkit (1.32) leaves its socket behind; it was absent at start.
            args.unix.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_plugin_path_arguments(parser: argparse.ArgumentParser) -> None:
    """Print the path of the installed nbdkit plugin.

    For a shell line that runs nbdkit yourself:

        nbdkit python "$(docteur plugin-path)" image=disk.img

    The plugin runs in nbdkit's embedded Python (the system's python3) and
    loads the docteur_core it is part of, also from a virtual environment.
    """


def run_plugin_path(args: argparse.Namespace) -> int:
    from .nbdkit import PLUGIN

    print(PLUGIN)
    return 0 if os.path.exists(PLUGIN) else 1


COMMANDS = {"serve": (add_arguments, run),
            "plugin-path": (add_plugin_path_arguments, run_plugin_path)}
