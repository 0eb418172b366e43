"""`docteur mount IMAGE MOUNTPOINT` and `docteur umount MOUNTPOINT`.

The kernel side is FUSE through `mfusepy` (a maintained ctypes binding of
libfuse 3, optional: `pip install 'docteur[mount]'`); the answers come from
`fs.ImageFS`. Going to the background is done here, not by libfuse: the
parent forks a child that opens the image and mounts it, and waits until
the child says the mount is up (libfuse's `init`, called once the kernel's
first request arrives) or why it failed. So a bad image, an unreachable NBD
URI or a refused mount point is one line from the command the user ran,
and exit status 1; a success returns only once the files are there.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import TYPE_CHECKING

from ..errors import DocteurError

if TYPE_CHECKING:  # (typing is not imported at run time: `docteur mount`'s start-up)
    from collections.abc import Callable
    from types import ModuleType
    from typing import NoReturn, ParamSpec, TypeVar

    from ..reader.image import Image
    from .fs import ImageFS

    P = ParamSpec("P")
    T = TypeVar("T")

SUBTYPE = "docteur"
# Seconds the kernel may keep attributes, names and missing names: the
# image never changes while it is mounted.
CACHE_SECONDS = 86_400
# `docteur umount` waits this long for the serving process to leave.
EXIT_WAIT = 10.0
NEEDS = ("docteur mount needs the mfusepy package and libfuse 3: "
         "pip install 'docteur[mount]' (and on Debian: apt-get install fuse3)")


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """Mount an image as a read-only file system (FUSE).

    Files are r--r--r--, executables r-xr-xr-x, directories r-xr-xr-x,
    symbolic links show their stored target, submodules are empty
    directories; every date is the commit's. Writes fail with EROFS.
    Goes to the background once the mount is up (-f stays, Ctrl-C
    unmounts); `docteur umount MOUNTPOINT` (or `fusermount3 -u`) unmounts.
    MOUNTPOINT must be an existing, empty directory.
    """
    from .. import options
    from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES

    parser.add_argument("image", metavar="IMAGE", help="an image file, a device, an NBD "
                        "URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH), "
                        "or an http(s):// URL (read by range requests)")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                        help=MODE_HELP + "; for a mount, fast also refuses a damaged or "
                        "hostile tree at mount time, where light reads it as EIO later")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground; Ctrl-C unmounts")
    parser.add_argument("--allow-other", action="store_true",
                        help="let every user read the mount (FUSE's allow_other; the modes "
                             "above apply, default_permissions); a user other than root needs "
                             "a user_allow_other line in /etc/fuse.conf")
    options.add_reading_arguments(parser)


def add_umount_arguments(parser: argparse.ArgumentParser) -> None:
    """Unmount what `docteur mount` mounted, and wait for its process to exit."""
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")


def load_binding() -> ModuleType:
    """The mfusepy module, or one line saying what to install."""
    try:
        import mfusepy
    except (ImportError, OSError):  # OSError: the module found no libfuse
        raise DocteurError(NEEDS) from None
    if mfusepy.fuse_version_major != 3:
        raise DocteurError(f"{NEEDS} (found libfuse {mfusepy.fuse_version_major})")
    binding: ModuleType = mfusepy  # (untyped: Any to a checker, a module all the same)
    return binding


def check_mountpoint(path: str) -> str:
    """The absolute mount point, if it is an existing, empty directory that
    is not already a mount point (libfuse 3 would mount over files)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        raise DocteurError(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise DocteurError(f"{path}: not a directory") from None
    except OSError as exc:
        raise DocteurError(f"{path}: {exc.strerror}") from None
    if names:
        raise DocteurError(f"{path}: not empty (mount on an empty directory)")
    if os.path.ismount(path):
        raise DocteurError(f"{path}: already a mount point")
    return os.path.abspath(path)


def _open_image(args: argparse.Namespace) -> Image:
    from ..trust import open_image

    return open_image(args.image, args, max_object_size=args.max_object_size,
                      max_lookup_bytes=args.max_lookup_bytes, max_paths=args.max_paths)


def make_operations(mfusepy: ModuleType, fs: ImageFS, on_init: Callable[[], None] | None = None,
                    log: Callable[[str], None] | None = None) -> object:
    """The mfusepy Operations forwarding to `fs`, for mfusepy.FUSE.

    Every write-side handler answers EROFS (the mount is also `ro`, so the
    kernel refuses most writes before asking). `log(line)` gets the message
    of each EIO, once per distinct message.
    """
    from .fs import FsError

    FuseOSError = mfusepy.FuseOSError
    logged: set[str] = set()

    def call(fn: Callable[P, T], *a: P.args, **k: P.kwargs) -> T:
        try:
            return fn(*a, **k)
        except FsError as exc:
            if exc.errno == errno.EIO and log is not None and str(exc) not in logged:
                if len(logged) < 1000:
                    logged.add(str(exc))
                log(str(exc))
            raise FuseOSError(exc.errno) from None

    def refuse(self: object, *a: object, **k: object) -> NoReturn:
        raise FuseOSError(errno.EROFS)

    # mfusepy ships no types: the module passed in is a ModuleType whose
    # Operations a checker cannot see (name-defined), and would be Any (misc).
    class Ops(mfusepy.Operations):  # type: ignore[name-defined,misc]
        use_ns = True

        def init(self, path: str) -> None:
            if on_init is not None:
                on_init()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            return call(fs.getattr, path)

        def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
            return [(name, {"st_mode": mode, "st_ino": ino}, 0)
                    for name, mode, ino in call(fs.readdir, path)]

        def readlink(self, path: str) -> str:
            return call(fs.readlink, path)

        def open(self, path: str, flags: int) -> int:
            call(fs.open, path, flags)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return call(fs.read, path, size, offset)

        def statfs(self, path: str) -> dict[str, int]:
            return fs.statfs()

        def access(self, path: str, amode: int) -> int:
            call(fs.getattr, path)
            if amode & os.W_OK:
                raise FuseOSError(errno.EROFS)
            return 0

        chmod = chown = create = mkdir = mknod = rename = rmdir = refuse
        symlink = link = unlink = truncate = utimens = write = refuse
        setxattr = removexattr = refuse

    return Ops()


def fuse_options(image_name: str, allow_other: bool = False) -> dict[str, bool | int | str]:
    """libfuse options: read-only, our inode numbers, and long kernel caches
    (nothing changes under a mounted image). `allow_other` lets other users
    in (FUSE lets only the mounting user by default); default_permissions,
    always on, then makes the kernel apply the r--r--r-- modes to them."""
    fsname = image_name.replace(",", "_").replace("\\", "_")
    options: dict[str, bool | int | str] = dict(
        ro=True, nothreads=True, foreground=True, use_ino=True, kernel_cache=True,
        subtype=SUBTYPE, fsname=fsname, attr_timeout=CACHE_SECONDS,
        entry_timeout=CACHE_SECONDS, negative_timeout=CACHE_SECONDS, default_permissions=True)
    if allow_other:
        options["allow_other"] = True
    return options


def serve(args: argparse.Namespace, mountpoint: str, on_init: Callable[[], None] | None = None,
          log: Callable[[str], None] | None = None) -> None:
    """Open the image and serve it at `mountpoint` until unmounted."""
    import warnings

    import fcntl

    mfusepy = load_binding()
    from .fs import ImageFS

    image = _open_image(args)
    lock = -1
    try:
        # Held on the directory under the mount: `docteur umount` takes it
        # to know this process has left.
        try:
            lock = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DocteurError(f"{mountpoint}: another docteur mount holds it") from None
        except OSError as exc:
            raise DocteurError(f"{mountpoint}: {exc.strerror}") from None
        fs = ImageFS(image, os.getuid(), os.getgid())
        up: list[bool] = []

        def init() -> None:
            up.append(True)
            if on_init is not None:
                on_init()

        ops = make_operations(mfusepy, fs, init, log)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                mfusepy.FUSE(ops, mountpoint, **fuse_options(
                    args.image, args.allow_other))
            except RuntimeError as exc:
                # libfuse's loop ended by SIGINT or SIGTERM also returns
                # non-zero, after unmounting: only a mount that never came
                # up is an error.
                if not up:
                    raise DocteurError(f"{mountpoint}: libfuse could not mount it "
                                       f"({exc})") from None
    finally:
        if lock >= 0:
            os.close(lock)
        image.close()


def run_mount(args: argparse.Namespace) -> int:
    load_binding()  # one line now if it is missing, before anything else
    mountpoint = check_mountpoint(args.mountpoint)
    if args.allow_other:  # fusermount3 would refuse it, in libfuse's words
        from .fuseconf import allow_other_refusal

        why = allow_other_refusal(os.getuid())
        if why is not None:
            raise DocteurError(why)
    if args.foreground:
        def log(line: str) -> None:
            print(f"docteur mount: {line}", file=sys.stderr, flush=True)

        def ready() -> None:
            print(f"docteur mount: {args.image} on {mountpoint}; Ctrl-C unmounts",
                  file=sys.stderr, flush=True)

        serve(args, mountpoint, ready, log)
        return 0
    return _background(args, mountpoint)


def _background(args: argparse.Namespace, mountpoint: str) -> int:
    """Fork; the child mounts and reports through a pipe: `ok` once the
    mount is up, else its error line. The parent returns only then."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: the serving process
        os.close(r)
        status = 1
        try:
            os.setsid()

            def ready() -> None:
                nonlocal w
                try:
                    os.write(w, b"ok")
                except OSError:  # the parent is gone: serve all the same
                    pass
                os.close(w)
                w = -1
                # A daemon's manners: no terminal, no folder kept busy.
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(null)
                os.chdir("/")

            serve(args, mountpoint, ready)
            status = 0
        except DocteurError as exc:
            if w >= 0:
                os.write(w, f"error {exc}".encode("utf-8", "backslashreplace"))
        except BaseException as exc:  # never a traceback on the user's terminal
            if w >= 0:
                os.write(w, f"error {type(exc).__name__}: {exc}".encode(
                    "utf-8", "backslashreplace"))
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while True:
        piece = os.read(r, 65536)
        if not piece:
            break
        chunks.append(piece)
    os.close(r)
    said = b"".join(chunks).decode("utf-8", "replace")
    if said == "ok":
        print(f"docteur mount: {args.image} on {mountpoint} (pid {pid}; "
              f"`docteur umount {mountpoint}` unmounts)", file=sys.stderr)
        return 0
    os.waitpid(pid, 0)
    if said.startswith("error "):
        raise DocteurError(said[len("error "):])
    raise DocteurError(f"{mountpoint}: the mount did not come up")


def _mount_type(path: str) -> str | None:
    """The file system type of the mount at `path` (/proc/self/mountinfo)."""
    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            sep = fields.index(b"-")
            where = fields[4].decode("utf-8", "surrogateescape")
            where = where.replace("\\040", " ").replace("\\011", "\t").replace(
                "\\012", "\n").replace("\\134", "\\")
            if where == target:
                found = fields[sep + 1].decode()  # the last one is on top
    return found


def run_umount(args: argparse.Namespace) -> int:
    import fcntl
    import subprocess
    import time

    path = args.mountpoint
    kind = _mount_type(path)  # a mount whose process died does not even stat
    if kind is None:
        if not os.path.isdir(path):
            raise DocteurError(f"{path}: no such directory")
        raise DocteurError(f"{path}: not a mount point")
    if kind != f"fuse.{SUBTYPE}":
        raise DocteurError(f"{path}: a {kind} mount, not docteur's: left alone")
    try:
        done = subprocess.run(["fusermount3", "-u", "--", os.path.abspath(path)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise DocteurError("fusermount3 is missing (on Debian: apt-get install fuse3)") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise DocteurError(f"{path}: {why}")
    # The serving process holds a lock on the directory under the mount
    # until it exits.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + EXIT_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DocteurError(f"{path}: unmounted, but its process has not "
                                       f"exited after {EXIT_WAIT:.0f} s") from None
                time.sleep(0.02)
    finally:
        os.close(fd)
    return 0


COMMANDS = {
    "mount": (add_mount_arguments, run_mount),
    "umount": (add_umount_arguments, run_umount),
}
