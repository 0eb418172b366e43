"""nbdkit plugin serving docteur images, read-only.

    nbdkit python nbd_plugin/docteur_plugin.py image=disk.img
    nbdkit python nbd_plugin/docteur_plugin.py dir=/srv/images [default=NAME]

Keys:
    image=PATH      serve one image (the export name is ignored, like the
                    file plugin does).
    dir=FOLDER      serve every FOLDER/*.img; the export name is the file
                    name without ".img" ("site" for site.img; "site.img" is
                    accepted too). Images added later are served as well.
    default=NAME    with dir=: the export a client gets when it asks for the
                    default ("") export; the first name in sorted order
                    otherwise.
    verify=quick    (default) before serving, check the header, that the IDX
                    offset is aligned and the IDX fits the image, PACK and IDX
                    signatures and versions, the IDX checksum, the PACK's
                    trailing checksum against the IDX's copy, the zero padding
                    and the header's commit: a few reads near the IDX, as
                    fast for a 1 GiB image as for a small one.
    verify=full     quick, then every object (docteur_core.verify).
    verify=none     check the header only.
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
is shown by `help=1` or by `python3 nbd_plugin/docteur_plugin.py --help`.

Every image is checked before nbdkit accepts clients: a bad one stops
nbdkit with one line saying what is wrong and where. Each connection opens
the image file itself and keeps that descriptor: when the file is replaced
by a rename, open connections keep reading the old image and new ones get
the new one (checked at `verify` level before it is served, `full` being
done as `quick` for replacements so that connecting stays fast).

Runs in nbdkit's embedded Python (the system's /usr/bin/python3), so it
finds docteur_core from its own location and uses the standard library only.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    import nbdkit
except ImportError:  # run as a plain script: only --help makes sense
    nbdkit = None

import errno
import stat
import threading

from docteur_core.errors import DocteurError
from nbd_plugin import imagecheck

API_VERSION = 2

KEYS = ("image", "dir", "default", "verify", "thread_model", "help")
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


_cfg = {"image": None, "dir": None, "default": None, "verify": "quick",
        "thread_model": "serialize_requests"}
_REPEATABLE = ("verify", "thread_model")
# (dev, ino, size, mtime_ns, ctime_ns) -> (level, ImageInfo) of images already
# checked, at the strongest level so far: the start-up `full` check covers
# the `quick` one each connection asks for.
_checked = {}
_checked_lock = threading.Lock()


def config(key, value):
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
    if _cfg.get(key) is not None and key not in _REPEATABLE:
        raise BadConfig(f"{key}= given twice")
    _cfg[key] = value


def _connection_level():
    """`full` reads every object: it is done once, at start-up, and a
    replaced image is checked `quick` when a client connects to it."""
    return "quick" if _cfg["verify"] == "full" else _cfg["verify"]


def _check_fd(fd, path, level):
    """Check the open file `fd` (exactly what will be served); cached per inode."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
        raise ImageRefused(f"{path}: not a regular file or block device")
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    done = _checked.get(key)
    if done is not None and imagecheck.LEVELS.index(done[0]) >= imagecheck.LEVELS.index(level):
        return done[1]
    size = st.st_size
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
    try:
        info = imagecheck.check_image(lambda off, n: os.pread(fd, n, off), size, level)
        if level == "full":
            _verify_full(path, f"/proc/self/fd/{fd}")
    except DocteurError as exc:
        raise ImageRefused(f"{path}: {exc}") from None
    with _checked_lock:
        if len(_checked) >= _CACHE_LIMIT:
            _checked.clear()
        _checked[key] = (level, info)
    return info


def _verify_full(path, same_file):
    """Every object, through docteur_core.verify.verify_image(device) -> Report.

    `same_file` names the descriptor already open, so that what is verified
    is what will be served even if `path` is being replaced meanwhile.
    """
    from docteur_core import verify
    from docteur_core.device import open_device

    device = open_device(same_file)
    try:
        report = verify.verify_image(device)
    finally:
        device.close()
    if not report.ok:
        lines = report.problem_lines()
        more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
        raise ImageRefused(f"{path}: verify=full: {lines[0] if lines else 'failed'}{more}")


def _open_image(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if nbdkit is not None:
            nbdkit.set_error(exc.errno)
        raise ImageRefused(f"{path}: cannot open: {exc.strerror}") from None


def _check_path(path, level):
    fd = _open_image(path)
    try:
        return _check_fd(fd, path, level)
    finally:
        os.close(fd)


def _dir_exports():
    """{export name: path} of the *.img files in dir=, in sorted order."""
    folder = _cfg["dir"]
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


def config_complete():
    image, folder = _cfg["image"], _cfg["dir"]
    if (image is None) == (folder is None):
        raise BadConfig("give exactly one of image=PATH or dir=FOLDER (see help=1)")
    if _cfg["default"] is not None and folder is None:
        raise BadConfig("default= only makes sense with dir=")
    if image is not None:
        _check_path(image, _cfg["verify"])
        return
    if not os.path.isdir(folder):
        raise BadConfig(f"dir={folder}: not a directory")
    exports = _dir_exports()
    if not exports:
        raise BadConfig(f"dir={folder}: no *{IMAGE_SUFFIX} file to serve")
    if _cfg["default"] is not None and _cfg["default"] not in exports:
        raise BadConfig(f"default={_cfg['default']}: no {_cfg['default']}{IMAGE_SUFFIX} "
                        f"in {folder}")
    for path in exports.values():
        _check_path(path, _cfg["verify"])


def thread_model():
    if _cfg["thread_model"] == "parallel":
        return nbdkit.THREAD_MODEL_PARALLEL
    return nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS


def _default_name():
    if _cfg["default"] is not None:
        return _cfg["default"]
    exports = _dir_exports()
    return next(iter(exports), "")


def default_export(readonly, is_tls):
    if _cfg["image"] is not None:
        return ""
    return _default_name()


def list_exports(readonly, is_tls):
    exports = {"": _cfg["image"]} if _cfg["image"] is not None else _dir_exports()
    out = []
    for name, path in exports.items():
        try:
            description = _check_path(path, _connection_level()).description
        except ImageRefused as exc:
            description = f"refused: {exc}"
        out.append((name, description))
    return out


def _path_for(name):
    if _cfg["image"] is not None:
        return _cfg["image"]
    if name == "":
        name = _default_name()
    if name.endswith(IMAGE_SUFFIX):
        name = name[:-len(IMAGE_SUFFIX)]
    path = _dir_exports().get(name)
    if path is None:
        nbdkit.set_error(errno.ENOENT)
        raise ImageRefused(f"no export named {name!r} in {_cfg['dir']}")
    return path


class Handle:
    """One connection: the descriptor it opened, and what was checked about it."""

    __slots__ = ("fd", "info", "path")

    def __init__(self, fd, info, path):
        self.fd = fd
        self.info = info
        self.path = path


def open(readonly):
    path = _path_for(nbdkit.export_name())
    fd = _open_image(path)
    try:
        info = _check_fd(fd, path, _connection_level())
    except BaseException:
        os.close(fd)
        raise
    return Handle(fd, info, path)


def close(h):
    os.close(h.fd)


def get_size(h):
    return h.info.size


def export_description(h):
    return h.info.description


def block_size(h):
    # NBD's preferred block size may not exceed its maximum (32 MiB here).
    return (512, min(MAX_REQUEST, max(PREFERRED_MIN, h.info.block_size)), MAX_REQUEST)


def can_multi_conn(h):
    return True


# Read-only: nbdkit's Python plugin derives every other capability from the
# callbacks defined (no pwrite, flush, trim or zero; cache and extents are
# native) and reports a non-rotational disk by default.
def can_write(h):
    return False


_preadv = os.preadv


def pread(h, buf, offset, flags):
    if _preadv(h.fd, (buf,), offset) != len(buf):
        _read_rest(h, buf, offset)


def _read_rest(h, buf, offset):
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


def cache(h, count, offset, flags):
    os.posix_fadvise(h.fd, offset, count, os.POSIX_FADV_WILLNEED)


def extents(h, count, offset, flags):
    return imagecheck.extents_in(h.info.extents, offset, count,
                                 bool(flags & nbdkit.FLAG_REQ_ONE))


if nbdkit is None and __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "help"):
        print(__doc__)
        sys.exit(0)
    print("this is an nbdkit plugin: nbdkit python " + sys.argv[0] + " image=disk.img"
          " (--help for its keys)", file=sys.stderr)
    sys.exit(2)
