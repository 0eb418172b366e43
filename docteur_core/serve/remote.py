"""`docteur serve URL`: an image on an HTTP origin, served over NBD by nbdkit
in C (its `curl` plugin, its `cache` filter on local disk), checked first
by range reads from Python.

Why not the docteur plugin over HTTP: nbdkit's curl plugin and cache filter
already do ranges, keep-alive, TLS and a bounded disk cache without the
GIL; the plugin would add Python to every miss and nothing else.

The check before serving cannot be `docteur verify --quick`: that hashes the
whole pack, i.e. downloads the whole image, and a host would then have paid
for every byte before its first guest reads one. Over HTTP the check
(`remote`) reads only:

- the header (commit id, IDX offset inside the object, alignment),
- the IDX's head (signature, version, fan-out: counts and bounds),
- the commit object, found through the IDX and hashed (its SHA-1 must be
  the header's commit id), and the root tree's id from it.

That is a few KiB (each miss fetches CHECK_CHUNK bytes; 24 KiB on the
Django image); it proves the URL names a docteur image of that commit, not
that every object is intact (`docteur verify URL` does that, downloading
about twice the image: its passes re-read the pack).

The object is pinned: the check's validator (ETag, else Last-Modified) is
sent by nbdkit with every request (`If-Match` / `If-Unmodified-Since`), so
an object replaced at the origin makes reads fail (HTTP 412) instead of
mixing blocks of two images in the cache. That binds honest origins only:
an origin may lie, so the commit is pinned too (`commit`, --commit ID, else
a URL ending in `<40 hex>.img`): an image holding another commit is refused
before nbdkit starts, and clients that pin the same commit (the command
`docteur serve` prints) check every byte they read against it. An origin
with neither ETag nor Last-Modified is served only under such a pin, and
an https URL only over https (`protocols=https`: no redirect to http).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DamagedImage, DocteurError
from ..format.pin import pin_of_url
from .nbdkit import CACHE_BLOCK, Listen, Server, ServeError, auto_cache_size, nbdkit_prefix

if TYPE_CHECKING:
    from ..blockdev.block import BlockDevice
    from ..blockdev.http_range import Validator

# The check's read-ahead: small, its bytes are fetched again by nbdkit.
CHECK_CHUNK = 4 << 10
REMOTE_LEVELS = ("quick", "full", "none")
DEFAULT_TIMEOUT = 60  # seconds nbdkit's curl waits for one request


@dataclass(frozen=True)
class RemoteImage:
    url: str
    size: int
    commit_hex: str
    tree_hex: str | None
    pin_header: str | None  # "If-Match: ..." / "If-Unmodified-Since: ..." / None
    bytes_read: int  # what the check fetched from the origin
    requests: int
    pinned_by: str | None = None  # "--commit", "the URL's name" or None (the header's)
    head: str | None = None  # why nbdkit's curl plugin cannot serve it (HEAD), or None

    @property
    def description(self) -> str:
        """As the docteur plugin describes an export (serve/imagecheck.py)."""
        return f"docteur image: commit {self.commit_hex} tree {self.tree_hex or 'not checked'}"


def pin_header(validator: Validator | None) -> str | None:
    """The request header that binds nbdkit's requests to the checked version."""
    if validator is None:
        return None
    if validator.etag:
        return f"If-Match: {validator.etag}"
    if validator.last_modified:
        return f"If-Unmodified-Since: {validator.last_modified}"
    return None


def check_remote(url: str, level: str = "quick", commit: str | None = None) -> RemoteImage:
    """Check the image at `url` by range reads (see the module docstring);
    raise a DocteurError (one line) if it is refused or unreachable.

    `none`: the header only; `quick`: header, IDX head, commit (the
    `remote` check); `full`: `docteur verify` over HTTP (every byte, once).
    `commit` (40 lower-case hex digits, --commit) is the commit the image
    must hold; without it a URL ending in `<40 hex>.img` pins that one
    (`format.pin.pin_of_url`). Another commit is `WrongCommit`, whatever the
    level (the header is always read).
    """
    from ..blockdev.block import ByteReader, SectorCache
    from ..blockdev.http import HttpDevice
    from ..blockdev.http_range import shown
    from .imagecheck import ImageRejected, check_commit, check_header

    if level not in REMOTE_LEVELS:
        raise ServeError(f"unknown verify level {level!r} (one of {', '.join(REMOTE_LEVELS)})")
    named = pin_of_url(url)
    pin = commit or named
    pinned_by = "--commit" if commit else ("the URL's name" if named else None)
    device = HttpDevice(url, chunk=CHECK_CHUNK, pinned=pin is not None)
    try:
        size = device.capacity
        tree = None
        if level == "full":
            from ..verify import verify_image

            if pin is not None:  # before downloading the whole image
                check_commit(check_header(ByteReader(device).pread, size).commit_hex, pin,
                             pinned_by, shown(url))
            from ..blockdev.spool import SpooledDevice

            report = verify_image(SectorCache(SpooledDevice(device)))
            if not report.ok:
                raise ImageRejected(report.problem_lines())
            found, tree = report.commit, report.tree
            assert found is not None  # an image that checked out names its commit
            check_commit(found, pin, pinned_by, shown(url))
        else:
            header = check_header(ByteReader(device).pread, size)
            found = header.commit_hex
            check_commit(found, pin, pinned_by, shown(url))
            if level == "quick":
                tree = _commit_tree(SectorCache(device), found)
        return RemoteImage(url, size, found, tree, pin_header(device.validator),
                           device.bytes_fetched, device.requests, pinned_by,
                           head_problem(url, size))
    finally:
        device.close()


def head_problem(url: str, size: int, timeout: float = 30.0) -> str | None:
    """Why nbdkit's curl plugin could not serve `url`, or None if it can.

    The curl plugin (nbdkit 1.32) learns the size from a HEAD request and
    wants `Accept-Ranges: bytes` in its answer; an origin may refuse HEAD
    (an S3 URL presigned for GET only answers 403) or answer it without
    either. The check's range GETs worked, so such a URL is then served by
    the docteur plugin reading with range GETs (`plugin_url_command`).
    Redirects are followed, as curl follows them."""
    import urllib.error
    import urllib.request

    from ..blockdev.http_range import shown

    request = urllib.request.Request(url, method="HEAD",
                                     headers={"User-Agent": "docteur-serve"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            length = response.headers.get("Content-Length")
            ranges = response.headers.get("Accept-Ranges", "")
            final = response.geturl()
    except urllib.error.HTTPError as exc:
        return f"the origin answers HEAD with HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"HEAD failed: {getattr(exc, 'reason', None) or exc}"
    if url[:6].lower() == "https:" and final[:6].lower() != "https:":
        return "HEAD is redirected to plain http"
    if status != 200 or length != str(size):
        return (f"the origin's answer to HEAD (HTTP {status}, Content-Length {length}) "
                f"does not give the size of {shown(url)}")
    if "bytes" not in ranges.lower():
        return "the origin's answer to HEAD does not say Accept-Ranges: bytes"
    return None


def _commit_tree(device: BlockDevice, commit_hex: str) -> str:
    """The root tree of the header's commit, read through the IDX with every
    object hashed (Image's verify mode)."""
    from ..reader.image import Image

    try:
        with Image.open(device, "light", verify=True, path_index=False) as image:
            tree = image.commit_info(0).tree
    except DocteurError:
        raise
    except (ValueError, IndexError) as exc:  # a hostile image must still be one line
        raise DamagedImage(f"cannot read the commit: {exc}") from None
    if image.store.commit_id.hex() != commit_hex:
        raise DamagedImage("the IDX leads to another commit than the header's", "offset 0")
    return tree


def check_cache_dir(path: Path | None) -> Path | None:
    """--cache-dir must be a writable folder (nbdkit's cache file goes there)."""
    if path is None:
        return None
    path = Path(path).resolve()
    if not path.is_dir():
        raise ServeError(f"--cache-dir {path}: no such folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ServeError(f"--cache-dir {path}: not writable")
    return path


def curl_command(image: RemoteImage, listen: Listen, *, cache_size: str | None = "auto",
                 foreground: bool = True, exit_with_parent: bool = False,
                 pidfile: str | Path | None = None,
                 timeout: int = DEFAULT_TIMEOUT) -> list[str]:
    """The nbdkit command line serving `image` read-only: the curl plugin
    (HTTP(S) only, pinned to the checked version), the exportname filter to
    describe the export by its commit, and the cache filter unless
    `cache_size` is None. The cache file goes in $TMPDIR (`cache_env`)."""
    argv = nbdkit_prefix(listen, foreground=foreground, exit_with_parent=exit_with_parent,
                         pidfile=pidfile)
    argv.append("--filter=exportname")
    if cache_size is not None:
        argv.append("--filter=cache")
    # an https URL stays https: curl applies `protocols` to redirects too
    protocols = "https" if image.url[:6].lower() == "https:" else "http,https"
    argv += ["curl", f"url={image.url}", f"protocols={protocols}", f"timeout={timeout}",
             "user-agent=docteur-serve"]
    if image.pin_header:
        argv.append(f"header={image.pin_header}")
    argv.append(f"exportdesc=fixed:{image.description}")
    return argv + cache_arguments(image, cache_size)


def cache_arguments(image: RemoteImage, cache_size: str | None) -> list[str]:
    """The cache filter's keys for `image` ("auto": sized from the image;
    None: no cache filter, no keys)."""
    if cache_size is None:
        return []
    if cache_size == "auto":
        cache_size = auto_cache_size(image.size)
    keys = ["cache-on-read=true", f"cache-min-block-size={CACHE_BLOCK}"]
    return keys + [f"cache-max-size={cache_size}"] if cache_size else keys


def plugin_url_command(image: RemoteImage, listen: Listen, *,
                       cache_size: str | None = "auto", foreground: bool = True,
                       exit_with_parent: bool = False,
                       pidfile: str | Path | None = None) -> list[str]:
    """The nbdkit command line serving `image` with the docteur plugin's
    url= (range GETs, no HEAD: `head_problem`), pinned to the checked
    commit, described as curl_command describes it, behind the cache filter
    unless `cache_size` is None."""
    from .nbdkit import PLUGIN

    argv = nbdkit_prefix(listen, foreground=foreground, exit_with_parent=exit_with_parent,
                         pidfile=pidfile)
    argv.append("--filter=exportname")
    if cache_size is not None:
        argv.append("--filter=cache")
    argv += ["python", str(PLUGIN), f"url={image.url}", f"commit={image.commit_hex}",
             f"exportdesc=fixed:{image.description}"]
    return argv + cache_arguments(image, cache_size)


def url_command(image: RemoteImage, listen: Listen, *, cache_size: str | None = "auto",
                foreground: bool = True, exit_with_parent: bool = False,
                pidfile: str | Path | None = None,
                timeout: int = DEFAULT_TIMEOUT) -> list[str]:
    """nbdkit's curl plugin where the origin answers HEAD, else the docteur
    plugin's range GETs (`timeout` is the curl plugin's)."""
    if image.head is None:
        return curl_command(image, listen, cache_size=cache_size, foreground=foreground,
                            exit_with_parent=exit_with_parent, pidfile=pidfile, timeout=timeout)
    return plugin_url_command(image, listen, cache_size=cache_size, foreground=foreground,
                              exit_with_parent=exit_with_parent, pidfile=pidfile)


def cache_env(cache_dir: Path | None) -> dict[str, str] | None:
    """nbdkit's environment: TMPDIR is where the cache filter puts its file."""
    if cache_dir is None:
        return None
    env = dict(os.environ)
    env["TMPDIR"] = str(cache_dir)
    return env


def remote_server(url: str, verify: str = "quick", cache_size: str | None = None,
                  commit: str | None = None) -> Server:
    """nbdkit's curl plugin serving the image at `url` on a free loopback
    port, tied to this process (`docteur boot URL`); checked now (pinned to
    `commit`, else to the commit the URL's name gives, as `check_remote`).
    No cache by default: a boot reads each sector once or twice, through
    the guest's own page cache."""
    image = check_remote(url, verify, commit)
    return Server(lambda listen, pidfile: url_command(
        image, listen, cache_size=cache_size, exit_with_parent=True, pidfile=pidfile),
        Listen(port=0))
