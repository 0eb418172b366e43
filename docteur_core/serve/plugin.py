"""nbdkit plugin serving docteur images, read-only.

    nbdkit python "$(docteur plugin-path)" image=disk.img
    nbdkit python "$(docteur plugin-path)" dir=/srv/images [default=NAME]

(`docteur plugin-path` prints where this file is installed; in a clone,
nbd_plugin/docteur_plugin.py is a link to it. `docteur serve` runs nbdkit
with it for you.)

Keys:
    image=PATH      serve one image (the export name is ignored, like the
                    file plugin does). A relative path is made absolute
                    when nbdkit reads it, before nbdkit goes to the
                    background (and changes directory to /).
    url=URL         (with commit=) serve the image at an http(s) URL, read with
                    range GETs (docteur_core/blockdev/http.py: the first
                    request pins the object's ETag, else Last-Modified,
                    and later ones send it back, so a replaced object is
                    an error, never a mix). For origins that refuse HEAD,
                    such as an S3 URL presigned for GET only, where
                    nbdkit's curl plugin cannot learn the size: `docteur
                    serve URL` uses it then, behind the cache filter.
                    The header's commit must be commit=; verify= does
                    not apply (`docteur serve` checked the URL).
    dir=FOLDER      serve every FOLDER/*.img (relative: as image=); the export name is the file
                    name without ".img" ("site" for site.img; "site.img" is
                    accepted too). Images added later are served as well.
    default=NAME    with dir=: the export a client gets when it asks for the
                    default ("") export; the first name in sorted order
                    otherwise.
    verify=quick    (default) before serving, what `docteur verify --quick`
                    checks: the header, signatures and counts, the zero
                    padding, the pack's SHA-1 (every byte of the pack read
                    once), the IDX's copy of it and its own checksum, and
                    the header's commit. The same code: an image the
                    command refuses, the plugin refuses, with its words.
    verify=full     what `docteur verify` checks: also every object.
    verify=none     check the header only.
    commit=ID       (with image=) the commit the image must hold, 40
                    hexadecimal digits: an image holding another one is
                    refused at start-up (nbdkit does not start) and, if the
                    file is replaced, on the next connection.
    pin=true        serve the image that was checked at start-up and only
                    it: once the file has been replaced, new clients are
                    refused (restart nbdkit to serve the new one). For use
                    behind nbdkit's cache filter, whose cache is shared by
                    every connection and would mix the two images. (`docteur
                    serve IMAGE` no longer needs it: it runs one nbdkit per
                    client, its file plugin on the image checked for that
                    client, so rebuilt images are served at C speed; see
                    docs/serving.md.)
    thread_model=serialize_requests
                    (default) one request at a time per connection;
                    connections (the plugin allows multi-conn) still run in
                    parallel. nbdkit's worker threads of one connection
                    would only fight over Python's GIL: on a page-cached
                    image this is 2.6x faster for random 4 KiB reads than
                    parallel (bench/serve.py).
    thread_model=parallel
                    requests of one connection run concurrently: better for
                    images on cold storage, where reads wait on the disk.
    help=1          print this text and exit.

nbdkit 1.32's Python plugin cannot extend `nbdkit ... --help`, so this text
is shown by `help=1` or by `python3 PLUGIN --help`; `nbdkit python PLUGIN
--dump-plugin` adds the plugin's version and keys (docteur_*). The plugin
declares `magic_config_key = "image"` for nbdkit versions whose Python
plugin honours it (`nbdkit python PLUGIN disk.img`); 1.32 (Debian 12) does
not yet, and wants `image=disk.img`.

Every image is checked before nbdkit accepts clients: a bad one stops
nbdkit with one line saying what is wrong and where. Each connection opens
the image file itself and keeps that descriptor: when the file is replaced
by a rename, open connections keep reading the old image and new ones get
the new one (checked at `verify` level before it is served, `full` being
done as `quick` for replacements so that connecting stays fast), unless
pin=true.

Runs in nbdkit's embedded Python (the system's /usr/bin/python3, even when
docteur is installed in a virtual environment), so it loads the docteur_core
it belongs to from its own location, and nothing else: neither that
environment's other packages nor another installed docteur_core.
"""

from __future__ import annotations

import os
import sys

# nbdkit 1.32 defines __file__ only while it loads this file (and crashes if
# a later callback such as dump_plugin raises), so it is read once, here.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load_own_package() -> None:
    """Import the docteur_core this file is part of (two folders up), alone.

    nbdkit runs this file as `__main__` from its path; putting the whole
    site-packages of a virtual environment on the system Python's path would
    mix that environment's packages (built for another Python, maybe) with
    the system's. Only the one package is registered.
    """
    import importlib.util

    here = _PACKAGE_DIR
    loaded = sys.modules.get("docteur_core")
    if loaded is not None and loaded.__file__ is not None \
            and os.path.dirname(os.path.realpath(loaded.__file__)) == here:
        return
    spec = importlib.util.spec_from_file_location(
        "docteur_core", os.path.join(here, "__init__.py"), submodule_search_locations=[here])
    # A path to a .py file always has a spec with a source loader.
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docteur_core"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _load_own_package()

try:
    import nbdkit
except ImportError:  # run as a plain script: only --help makes sense
    nbdkit = None

import errno
import stat
import threading
from typing import TYPE_CHECKING, final

from docteur_core import __version__
from docteur_core.errors import DocteurError
from docteur_core.serve import imagecheck

if TYPE_CHECKING:
    from docteur_core.blockdev.http import HttpDevice

API_VERSION = 2
magic_config_key = "image"

KEYS = ("image", "dir", "url", "default", "verify", "thread_model", "pin", "commit", "help")
THREAD_MODELS = ("serialize_requests", "parallel")
MAX_REQUEST = 32 * 1024 * 1024
PREFERRED_MIN = 4096
IMAGE_SUFFIX = ".img"
_CACHE_LIMIT = 256

# nbdkit logs a failing callback's traceback; a refusal is one line.
sys.tracebacklimit = 0


class ImageRefused(Exception):
    """Shown by nbdkit as `ImageRefused: <path>: <reason>`."""


class BadConfig(Exception):
    """Shown by nbdkit as `BadConfig: <what is wrong>`."""


class _Config:
    """The keys nbdkit passed, checked by config(); None: not given."""

    def __init__(self) -> None:
        self.image: str | None = None
        self.dir: str | None = None
        self.url: str | None = None
        self.default: str | None = None
        self.verify = "quick"
        self.thread_model = "serialize_requests"
        self.pin: bool | None = None
        self.commit: str | None = None


_cfg = _Config()
_REPEATABLE = ("verify", "thread_model")
# (dev, ino, size, mtime_ns, ctime_ns) -> (level, ImageInfo) of images already
# checked, at the strongest level so far: the start-up `full` check covers
# the `quick` one each connection asks for.
_checked: dict[tuple[int, ...], tuple[str, imagecheck.ImageInfo]] = {}
_checked_lock = threading.Lock()


def config(key: str, value: str) -> None:
    if key not in KEYS:
        raise BadConfig(f"unknown key {key!r}; keys are: {', '.join(k + '=' for k in KEYS)}"
                        " (see help=1)")
    if key == "help":
        sys.stdout.write(__doc__)
        sys.stdout.flush()
        os._exit(0)
    if key == "verify" and value not in imagecheck.LEVELS:
        raise BadConfig(f"verify={value!r}: must be one of {', '.join(imagecheck.LEVELS)}")
    if key == "thread_model" and value not in THREAD_MODELS:
        raise BadConfig(f"thread_model={value!r}: must be one of {', '.join(THREAD_MODELS)}")
    parsed: str | bool = value
    if key == "commit":
        if len(value) != 40 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise BadConfig(f"commit={value!r}: 40 hexadecimal digits are needed")
        parsed = value.lower()
    if key == "pin":
        if value not in ("true", "false"):
            raise BadConfig(f"pin={value!r}: must be true or false")
        parsed = value == "true"
    if getattr(_cfg, key) is not None and key not in _REPEATABLE:
        raise BadConfig(f"{key}= given twice")
    if key == "url" and not value.lower().startswith(("http://", "https://")):
        raise BadConfig(f"url={value!r}: an http:// or https:// URL is needed")
    if key in ("image", "dir"):
        # nbdkit changes directory to / when it goes to the background.
        parsed = os.path.abspath(value)
    # `key` is one of KEYS other than help: a field of _Config, of the type
    # parsed above.
    setattr(_cfg, key, parsed)


def dump_plugin() -> None:
    """Lines added to `nbdkit python PLUGIN --dump-plugin`."""
    print(f"docteur_version={__version__}")
    print(f"docteur_keys={','.join(KEYS)}")
    print(f"docteur_magic_config_key={magic_config_key}")
    print(f"docteur_package={_PACKAGE_DIR}")


def _connection_level() -> str:
    """`full` reads every object: it is done once, at start-up, and a
    replaced image is checked `quick` when a client connects to it."""
    return "quick" if _cfg.verify == "full" else _cfg.verify


def _file_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# With pin=true: the key of the image checked at start-up.
_pinned: dict[str, tuple[int, ...]] = {}


def _check_fd(fd: int, path: str, level: str) -> imagecheck.ImageInfo:
    """Check the open file `fd` (exactly what will be served); cached per inode."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
        raise ImageRefused(f"{path}: not a regular file or block device")
    key = _file_key(st)
    pinned = _pinned.get(path)
    if pinned is not None and pinned != key:
        raise ImageRefused(f"{path}: the image was replaced after the server started, and "
                           "a cached server (pin=true, `docteur serve` without --no-cache) "
                           "serves only the first one: restart the server to serve the new "
                           "image (`docteur serve --no-cache` serves replacements)")
    done = _checked.get(key)
    if done is not None and imagecheck.LEVELS.index(done[0]) >= imagecheck.LEVELS.index(level):
        return _pinned_commit(done[1], path)
    # What is verified is the descriptor already open, so that it is what
    # will be served even if `path` is being replaced meanwhile.
    from docteur_core.blockdev.block import FileDevice

    try:
        device = FileDevice(f"/proc/self/fd/{fd}")
        try:
            info = imagecheck.check_image(device, level)
        finally:
            device.close()
    except DocteurError as exc:
        raise ImageRefused(f"{path}: {exc}") from None
    with _checked_lock:
        if len(_checked) >= _CACHE_LIMIT:
            _checked.clear()
        _checked[key] = (level, info)
        if _cfg.pin and path not in _pinned:
            _pinned[path] = key
    return _pinned_commit(info, path)


def _pinned_commit(info: imagecheck.ImageInfo, path: str) -> imagecheck.ImageInfo:
    """`info`, if its commit is the one commit= pins (or nothing is pinned)."""
    try:
        imagecheck.check_commit(info.commit_hex, _cfg.commit, "commit=", "it")
    except DocteurError as exc:
        raise ImageRefused(f"{path}: {exc}") from None
    return info


def _open_image(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if nbdkit is not None:
            nbdkit.set_error(exc.errno)
        raise ImageRefused(f"{path}: cannot open: {exc.strerror}") from None


def _check_path(path: str, level: str) -> imagecheck.ImageInfo:
    fd = _open_image(path)
    try:
        return _check_fd(fd, path, level)
    finally:
        os.close(fd)


def _dir_exports() -> dict[str, str]:
    """{export name: path} of the *.img files in dir=, in sorted order."""
    folder = _cfg.dir
    assert folder is not None  # called with dir= only
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise ImageRefused(f"{folder}: cannot list: {exc.strerror}") from None
    out = {}
    for name in names:
        if name.endswith(IMAGE_SUFFIX) and len(name) > len(IMAGE_SUFFIX) \
                and not name.startswith("."):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                out[name[:-len(IMAGE_SUFFIX)]] = path
    return out


def config_complete() -> None:
    image, folder, url = _cfg.image, _cfg.dir, _cfg.url
    if sum(v is not None for v in (image, folder, url)) != 1:
        raise BadConfig("give exactly one of image=PATH, dir=FOLDER or url=URL (see help=1)")
    if url is not None:
        if _cfg.commit is None:
            raise BadConfig("url= needs commit=ID, the commit the image must hold")
        _open_url(url)
        return
    if _cfg.default is not None and folder is None:
        raise BadConfig("default= only makes sense with dir=")
    if _cfg.commit is not None and folder is not None:
        raise BadConfig("commit= pins one image: give it with image=, not dir=")
    if image is not None:
        _check_path(image, _cfg.verify)
        return
    assert folder is not None  # exactly one of the three was given
    if not os.path.isdir(folder):
        raise BadConfig(f"dir={folder}: not a directory")
    exports = _dir_exports()
    if not exports:
        raise BadConfig(f"dir={folder}: no *{IMAGE_SUFFIX} file to serve")
    if _cfg.default is not None and _cfg.default not in exports:
        raise BadConfig(f"default={_cfg.default}: no {_cfg.default}{IMAGE_SUFFIX} "
                        f"in {folder}")
    for path in exports.values():
        _check_path(path, _cfg.verify)


def thread_model() -> int:
    if _cfg.thread_model == "parallel":
        return int(nbdkit.THREAD_MODEL_PARALLEL)
    return int(nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS)


def _default_name() -> str:
    if _cfg.default is not None:
        return _cfg.default
    exports = _dir_exports()
    return next(iter(exports), "")


def default_export(readonly: bool, is_tls: bool) -> str:
    if _cfg.dir is None:
        return ""
    return _default_name()


def list_exports(readonly: bool, is_tls: bool) -> list[tuple[str, str]]:
    if _remote is not None:
        return [("", _remote.info.description)]
    exports = {"": _cfg.image} if _cfg.image is not None else _dir_exports()
    out = []
    for name, path in exports.items():
        try:
            description = _check_path(path, _connection_level()).description
        except ImageRefused as exc:
            description = f"refused: {exc}"
        out.append((name, description))
    return out


@final
class _Remote:
    """With url=: the one HttpDevice every connection reads through (it has
    its own lock), what its header says, and the URL as shown in errors."""

    __slots__ = ("device", "info", "shown")

    def __init__(self, device: HttpDevice, info: imagecheck.ImageInfo, shown: str) -> None:
        self.device = device
        self.info = info
        self.shown = shown


_remote: _Remote | None = None  # set by config_complete() when url= is given


def _open_url(url: str) -> None:
    """Open `url` (range GETs), check its header and commit: a refusal stops
    nbdkit with one line, before any client."""
    from docteur_core.blockdev.block import ByteReader
    from docteur_core.blockdev.http import HttpDevice
    from docteur_core.blockdev.http_range import shown

    global _remote
    try:
        device = HttpDevice(url, pinned=True)
        header = imagecheck.check_header(ByteReader(device).pread, device.capacity)
        imagecheck.check_commit(header.commit_hex, _cfg.commit, "commit=", "it")
    except DocteurError as exc:
        raise ImageRefused(f"{shown(url)}: {exc}") from None
    size = device.capacity
    _remote = _Remote(device, imagecheck.ImageInfo(
        size, header.commit_hex, None, imagecheck.inferred_block_size(header.idx_offset, size),
        ((0, size, imagecheck.EXTENT_DATA),)), shown(url))


@final
class RemoteHandle:
    """One connection to the url= image: the shared device."""

    __slots__ = ("info", "path", "device")

    def __init__(self, remote: _Remote) -> None:
        self.info = remote.info
        self.path = remote.shown
        self.device = remote.device


def _remote_pread(h: RemoteHandle, buf: memoryview, offset: int) -> None:
    """Bytes of the url= image into `buf`, 512-aligned underneath."""
    n = len(buf)
    start = offset - offset % 512
    end = min(-(-(offset + n) // 512) * 512, h.info.size)
    try:
        data = h.device.read(start, end - start)
    except DocteurError as exc:
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, f"{h.path}: {exc}") from None
    piece = data[offset - start:offset - start + n]
    if len(piece) != n:
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, f"{h.path}: short read at {offset}")
    buf[:] = piece


def _path_for(name: str) -> str:
    if _cfg.image is not None:
        return _cfg.image
    if name == "":
        name = _default_name()
    if name.endswith(IMAGE_SUFFIX):
        name = name[:-len(IMAGE_SUFFIX)]
    path = _dir_exports().get(name)
    if path is None:
        nbdkit.set_error(errno.ENOENT)
        raise ImageRefused(f"no export named {name!r} in {_cfg.dir}")
    return path


@final
class Handle:
    """One connection: the descriptor it opened, and what was checked about it."""

    __slots__ = ("fd", "info", "path")

    def __init__(self, fd: int, info: imagecheck.ImageInfo, path: str) -> None:
        self.fd = fd
        self.info = info
        self.path = path


def open(readonly: bool) -> Handle | RemoteHandle:
    if _remote is not None:
        return RemoteHandle(_remote)
    path = _path_for(nbdkit.export_name())
    fd = _open_image(path)
    try:
        info = _check_fd(fd, path, _connection_level())
    except BaseException:
        os.close(fd)
        raise
    return Handle(fd, info, path)


def close(h: Handle | RemoteHandle) -> None:
    if isinstance(h, Handle):
        os.close(h.fd)


def get_size(h: Handle | RemoteHandle) -> int:
    return h.info.size


def export_description(h: Handle | RemoteHandle) -> str:
    return h.info.description


def block_size(h: Handle | RemoteHandle) -> tuple[int, int, int]:
    # NBD's preferred block size may not exceed its maximum (32 MiB here).
    return (512, min(MAX_REQUEST, max(PREFERRED_MIN, h.info.block_size)), MAX_REQUEST)


def can_multi_conn(h: Handle | RemoteHandle) -> bool:
    return True


# Read-only: nbdkit's Python plugin derives every other capability from the
# callbacks defined (no pwrite, flush, trim or zero; cache and extents are
# native) and reports a non-rotational disk by default.
def can_write(h: Handle | RemoteHandle) -> bool:
    return False


_preadv = os.preadv


# nbdkit (API_VERSION 2) passes `buf` as a writable memoryview over its own
# buffer. `type(h) is RemoteHandle`: the handles are final classes, so a
# checker narrows both branches (and it costs 2.5 ns more than `h.__class__`).
def pread(h: Handle | RemoteHandle, buf: memoryview, offset: int, flags: int) -> None:
    if type(h) is RemoteHandle:
        return _remote_pread(h, buf, offset)
    if _preadv(h.fd, (buf,), offset) != len(buf):
        _read_rest(h, buf, offset)


def _read_rest(h: Handle, buf: memoryview, offset: int) -> None:
    """A short read: loop, and fail cleanly if the file was cut under us."""
    view = memoryview(buf)
    done = 0
    while done < len(view):
        n = os.preadv(h.fd, (view[done:],), offset + done)
        if n <= 0:
            nbdkit.set_error(errno.EIO)
            raise OSError(errno.EIO, f"{h.path}: image shorter than served "
                          f"(read at {offset + done})")
        done += n


def cache(h: Handle | RemoteHandle, count: int, offset: int, flags: int) -> None:
    if type(h) is RemoteHandle:
        return
    os.posix_fadvise(h.fd, offset, count, os.POSIX_FADV_WILLNEED)


def extents(h: Handle | RemoteHandle, count: int, offset: int,
            flags: int) -> list[tuple[int, int, int]]:
    return imagecheck.extents_in(h.info.extents, offset, count,
                                 bool(flags & nbdkit.FLAG_REQ_ONE))


if nbdkit is None and __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "help"):
        print(__doc__)
        sys.exit(0)
    print("this is an nbdkit plugin: nbdkit python " + sys.argv[0] + " image=disk.img"
          " (--help for its keys)", file=sys.stderr)
    sys.exit(2)
