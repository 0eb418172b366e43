"""Build Solo5's tenders and docteur's Solo5 guest, once, into a cache.

Inputs: Solo5's source tarball (`$DOCTEUR_SOLO5_SOURCE`, else the shared
oracle's copy next to the repository), zlib's source as Debian ships it
(the `.orig` tarball of Debian 12's zlib source package, fetched from the
Debian mirror apt uses and checked against a pinned SHA-256, the one in the
package's `.dsc`), and the guest's C sources (guest/). The outputs are keyed
by a hash of all three, so a second build is a hash and a directory lookup.

Concurrent builds are safe: one holds a lock on the cache folder, builds in
a temporary folder inside it and renames the result into place; the others
wait for the lock and find the result.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

from ...errors import DocteurError

PACKAGE = Path(__file__).resolve().parent
GUEST_SOURCES = PACKAGE / "guest"
REPO = PACKAGE.parents[2]  # a clone's root (or site-packages)
TENDERS = ("spt", "hvt")
SOLO5_VERSION = "v0.9.3"
SOLO5_TARBALL = "solo5-0.9.3.tar.gz"
SOLO5_WHERE = ("https://github.com/Solo5/solo5/archive/refs/tags/v0.9.3.tar.gz, "
               "saved as solo5-0.9.3.tar.gz")

# Debian 12's zlib source package (1:1.2.13.dfsg-1): its upstream tarball and
# the SHA-256 its .dsc gives. A Debian update that changes the upstream
# tarball changes this pin, on purpose: the guest is built from known bytes.
ZLIB_DSC = "zlib_1.2.13.dfsg-1.dsc"
ZLIB_TARBALL = "zlib_1.2.13.dfsg.orig.tar.bz2"
ZLIB_SHA256 = "71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1"
ZLIB_POOL = "pool/main/z/zlib"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ZLIB_FILES = ("inflate.c", "inftrees.c", "inffast.c", "adler32.c", "zutil.c")

Progress = Callable[[str], None]


class Solo5Error(DocteurError):
    """Building or running the Solo5 guest failed (one line)."""


class Built(NamedTuple):
    """Where the build put things: {"spt": path, "hvt": path} for each."""
    tenders: dict[str, Path]
    unikernels: dict[str, Path]


def _quiet(_: str) -> None:
    pass


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $DOCTEUR_CACHE, else $XDG_CACHE_HOME/docteur (~/.cache/docteur)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DOCTEUR_CACHE"):
        return Path(os.environ["DOCTEUR_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "docteur"


# --- inputs -----------------------------------------------------------------------

def find_solo5_source(solo5_source: str | Path | None = None) -> Path:
    """The Solo5 source tarball: the argument, $DOCTEUR_SOLO5_SOURCE, else the oracle's."""
    given = solo5_source or os.environ.get("DOCTEUR_SOLO5_SOURCE")
    if given:
        path = Path(given)
        if not path.is_file():
            raise Solo5Error(f"Solo5 source {path} is not a file: give the tarball "
                             f"{SOLO5_TARBALL} ({SOLO5_WHERE})")
        return path
    candidates = [REPO.parent / "shared" / "oracle" / "solo5" / SOLO5_TARBALL]
    for path in candidates:
        if path.is_file():
            return path
    raise Solo5Error(f"no Solo5 source: set DOCTEUR_SOLO5_SOURCE to {SOLO5_TARBALL} "
                     f"(from {SOLO5_WHERE}); looked in {candidates[0].parent}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def apt_mirrors(sources_dir: Path = Path("/etc/apt")) -> list[str]:
    """Base URIs of the Debian archives apt uses for `main` (security ones last)."""
    found: list[str] = []
    for path in [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*"))]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":    # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"(?m)^([A-Za-z-]+):[ \t]*(.*)$", stanza))
                if "deb" in fields.get("Types", "").split() and \
                        "main" in fields.get("Components", "").split():
                    found += fields.get("URIs", "").split()
        else:                            # one-line style: deb [opts] URI suite comps
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+(.*)", line)
                if m and "main" in m.group(2).split():
                    found.append(m.group(1))
    ordered = [u for u in found if "security" not in u] + [DEFAULT_MIRROR]
    return list(dict.fromkeys(u.rstrip("/") for u in ordered if u.startswith("http")))


def _download(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()  # (typeshed's urlopen answers Any)
        return data


def _fetch_zlib(target: Path, progress: Progress) -> None:
    """Download Debian's zlib upstream tarball to `target`, checked."""
    problems: list[str] = []
    for mirror in apt_mirrors():
        base = f"{mirror}/{ZLIB_POOL}"
        try:
            dsc = _download(f"{base}/{ZLIB_DSC}").decode(errors="replace")
            listed = re.search(rf"(?m)^ ([0-9a-f]{{64}}) \d+ {re.escape(ZLIB_TARBALL)}$",
                               dsc.split("Checksums-Sha256:", 1)[-1])
            if not listed or listed.group(1) != ZLIB_SHA256:
                problems.append(f"{base}/{ZLIB_DSC} does not list {ZLIB_TARBALL} with "
                                f"SHA-256 {ZLIB_SHA256}")
                continue
            progress(f"downloading {base}/{ZLIB_TARBALL}")
            data = _download(f"{base}/{ZLIB_TARBALL}")
        except (urllib.error.URLError, OSError) as exc:
            problems.append(f"{base}: {getattr(exc, 'reason', exc)}")
            continue
        if hashlib.sha256(data).hexdigest() != ZLIB_SHA256:
            problems.append(f"{base}/{ZLIB_TARBALL} does not have SHA-256 {ZLIB_SHA256}")
            continue
        partial = target.with_name(target.name + f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, target)
        return
    raise Solo5Error(f"cannot get zlib's source ({ZLIB_TARBALL} of Debian's zlib "
                     f"source package): {'; '.join(problems)}; or set "
                     f"DOCTEUR_ZLIB_SOURCE to that file")


def zlib_source(cache: Path, progress: Progress = _quiet) -> Path:
    """Debian's zlib tarball: $DOCTEUR_ZLIB_SOURCE, the cached copy or a download."""
    given = os.environ.get("DOCTEUR_ZLIB_SOURCE")
    path = Path(given) if given else cache / "downloads" / ZLIB_TARBALL
    if not given and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _fetch_zlib(path, progress)
    if not path.is_file():
        raise Solo5Error(f"DOCTEUR_ZLIB_SOURCE={given}: no such file")
    if _sha256_file(path) != ZLIB_SHA256:
        raise Solo5Error(f"{path} is not {ZLIB_TARBALL} (SHA-256 differs from "
                         f"{ZLIB_SHA256})")
    return path


def build_key(solo5_tarball: Path) -> str:
    """A hash of every input: the guest's sources, Solo5's and zlib's tarballs,
    and this file (which holds the build steps and the tender patch)."""
    digest = hashlib.sha256()
    for path in sorted(GUEST_SOURCES.iterdir()) + [Path(__file__)]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_sha256_file(solo5_tarball).encode())
    digest.update(ZLIB_SHA256.encode())
    return digest.hexdigest()[:20]


# --- building ---------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str, hint: str = "") -> None:
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [l.strip() for l in proc.stdout.decode(errors="replace").splitlines()
                 if l.strip()]
        # The compiler's or configure's complaint, rather than make's summary.
        errors = [l for l in lines if re.search(r"error|not found|missing", l, re.I)
                  and not l.startswith("make")]
        last = (errors or lines or ["no output"])[0 if errors else -1]
        raise Solo5Error(f"{what} failed (status {proc.returncode}): {last}{hint}")


def _unpack(tarball: Path, into: Path) -> Path:
    """Extract a source tarball; return its single top folder."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse odd members
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise Solo5Error(f"{tarball} does not hold one top folder")
    return tops[0]


# solo5-{spt,hvt} open the block device O_RDWR, so a read-only image (a file
# without write permission, or nbdfuse's file for a read-only export) is
# refused. docteur's guest never writes: open it read-only then (a write
# would fail with an error the guest sees).
_ATTACH = "tenders/common/block_attach.c"
_ATTACH_FROM = "    int fd = open(path, O_RDWR);\n"
_ATTACH_TO = ("    int fd = open(path, O_RDWR);\n"
              "    /* docteur: read-only images are fine for a reader */\n"
              "    if (fd == -1 && (errno == EACCES || errno == EROFS || errno == EPERM))\n"
              "        fd = open(path, O_RDONLY);\n")


def _patch_tenders(solo5: Path) -> None:
    path = solo5 / _ATTACH
    text = path.read_text()
    if _ATTACH_FROM not in text:
        raise Solo5Error(f"{path} is not Solo5 {SOLO5_VERSION}'s: cannot apply the "
                         "read-only patch")
    path.write_text("#include <errno.h>\n" + text.replace(_ATTACH_FROM, _ATTACH_TO))


def _build_solo5(tarball: Path, work: Path, progress: Progress) -> Path:
    solo5 = _unpack(tarball, work / "solo5-src")
    version_h = solo5 / "include" / "version.h.distrib"
    if not version_h.exists():   # a source tarball is not a git checkout
        version_h.write_text(f'#define SOLO5_VERSION "{SOLO5_VERSION}"\n')
    _patch_tenders(solo5)
    hint = " (Solo5 needs libseccomp-dev, pkg-config and a C compiler: see .ci/setup)"
    progress("configuring Solo5")
    _run(["./configure.sh"], solo5, "Solo5's configure.sh", hint)
    progress("building Solo5's tenders and bindings")
    jobs = str(min(4, os.cpu_count() or 1))
    # Not the tests. MAKECMDGOALS= because Solo5's top GNUmakefile passes
    # its goals down to each sub-make, which knows none of them.
    _run(["make", f"-j{jobs}", "elftool", "tenders", "toolchain", "bindings",
          "MAKECMDGOALS="], solo5, "building Solo5", hint)
    return solo5


def _build_guest(solo5: Path, zlib_tarball: Path, work: Path, progress: Progress) -> Path:
    zlib = _unpack(zlib_tarball, work / "zlib-src")
    missing = [name for name in ZLIB_FILES if not (zlib / name).is_file()]
    if missing:
        raise Solo5Error(f"{zlib_tarball} lacks {', '.join(missing)}")
    out = work / "guest"
    out.mkdir()
    progress("building the docteur guest (spt and hvt)")
    _run(["make", "-j2", "-f", str(GUEST_SOURCES / "GNUmakefile"), f"SOLO5={solo5}",
          f"ZLIB={zlib}"], out, "building the docteur guest")
    return out


def _paths(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    return ({t: folder / f"solo5-{t}" for t in TENDERS},
            {t: folder / f"docteur_guest.{t}" for t in TENDERS})


def build(cache_dir: str | Path | None = None, solo5_source: str | Path | None = None,
          progress: Progress | None = None) -> Built:
    """The tenders and the guest (spt and hvt), built or taken from the cache.

    Returns Built(tenders, unikernels): {"spt": path, "hvt": path} each.
    `progress` is told about the steps of a build (not of a cache hit).
    """
    progress = progress or _quiet
    started = time.monotonic()
    tarball = find_solo5_source(solo5_source)
    root = cache_root(cache_dir) / "solo5"
    final = root / build_key(tarball)
    tenders, unikernels = _paths(final)
    if all(p.is_file() for p in [*tenders.values(), *unikernels.values()]):
        return Built(tenders, unikernels)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # another build may be under way: wait
        if final.is_dir():
            return Built(tenders, unikernels)
        zlib_tarball = zlib_source(cache_root(cache_dir), progress)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            solo5 = _build_solo5(tarball, work, progress)
            guest = _build_guest(solo5, zlib_tarball, work, progress)
            result = work / "result"
            result.mkdir()
            for t in TENDERS:
                shutil.copy2(solo5 / "tenders" / t / f"solo5-{t}", result / f"solo5-{t}")
                shutil.copy2(guest / f"docteur_guest.{t}", result / f"docteur_guest.{t}")
            os.rename(result, final)         # atomic: the cache holds all or nothing
        finally:
            shutil.rmtree(work, ignore_errors=True)
    progress(f"built Solo5 and the guest in {time.monotonic() - started:.1f} s")
    return Built(tenders, unikernels)
