"""Run docteur's Solo5 guest on an image file or an NBD export.

A tender (solo5-spt: a sandboxed Linux process; solo5-hvt: a KVM guest)
attaches a file as the guest's block device `storage`. An NBD export becomes
such a file with Debian's nbdfuse (`nbdfuse MOUNTPOINT/image URI`), unmounted
again (fusermount3 -u) on every way out: result, error, timeout, Ctrl-C.

The tender writes its own messages on the same console as the guest, so the
guest frames what it says (see guest/docteur_guest.c) and this module takes
the frames out, checking each one's length and SHA-256: the bytes returned
are the guest's, exactly, or an error says why not.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from ... import children
from ..runner import image_server
from .toolchain import Progress, Solo5Error, _quiet, build

VERBS = ("cat", "sha256")
TENDER_CHOICES = ("spt", "hvt", "auto")
DEFAULT_TIMEOUT = 60.0
MAX_COMMAND_LINE = 8000      # the tenders' SPT/HVT_CMDLINE_SIZE is 8192
_FRAME = re.compile(rb"@@docteur:begin (out|err|log) (\d+)\n")
_hvt_works: dict[str, bool] = {}


class RunResult(NamedTuple):
    """What the guest said: its exit status, its output and its error line."""
    status: int
    stdout: bytes
    stderr: bytes


def is_uri(target: str | Path) -> bool:
    return "://" in str(target)


# --- the console ----------------------------------------------------------------

def parse_console(console: bytes) -> tuple[dict[str, bytes], bytes]:
    """The guest's streams ("out", "err", "log": those it wrote, even empty)
    and what is left (the tender's own messages)."""
    streams: dict[str, bytes] = {}
    rest: list[bytes] = []
    pos = 0
    while (m := _FRAME.search(console, pos)) is not None:
        rest.append(console[pos:m.start()])
        stream, length = m.group(1), int(m.group(2))
        payload = console[m.end():m.end() + length]
        end = re.compile(rb"\n@@docteur:end " + stream + rb" ([0-9a-f]{64})\n")
        closing = end.match(console, m.end() + length)
        if len(payload) < length or not closing:
            raise Solo5Error(f"the guest's {stream.decode()} output was cut short "
                             f"({len(payload)} of {length} bytes on the console)")
        if hashlib.sha256(payload).hexdigest().encode() != closing.group(1):
            raise Solo5Error(f"the guest's {stream.decode()} output ({length} bytes) "
                             "was damaged on the way: its SHA-256 differs")
        streams[stream.decode()] = streams.get(stream.decode(), b"") + payload
        pos = closing.end()
    rest.append(console[pos:])
    return streams, b"".join(rest)


def _last_line(*texts: bytes) -> str:
    for text in texts:
        lines = [l.strip() for l in text.decode(errors="replace").splitlines() if l.strip()]
        if lines:
            return lines[-1]
    return "no message"


# --- processes ------------------------------------------------------------------

def check_commit(commit: str | None) -> str | None:
    """A pinned commit as the guest takes it: 40 hex digits, lower case."""
    if commit is None:
        return None
    text = str(commit).lower()
    if len(text) != 40 or any(c not in "0123456789abcdef" for c in text):
        raise Solo5Error(f"{commit!r} is not a commit id: 40 hexadecimal digits are needed")
    return text


def image_commit(image: str | Path) -> str:
    """The commit id an image file's header names (its first 20 bytes)."""
    path = Path(image)
    if not path.is_file():
        what = "is a directory, not an image" if path.is_dir() else "no such image file"
        raise Solo5Error(f"{image}: {what}")
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) != 20:
        raise Solo5Error(f"{image}: too short for an image (no commit id)")
    return head.hex()


def tender_command(tender: Path, unikernel: Path, image: Path, verb: str, path: str,
                   memory: int | None = None, sector_size: int | None = None, *,
                   commit: str | None = None, verify: bool = True) -> list[str]:
    """The tender's command line; PATH is percent-encoded (Solo5 joins the
    arguments with spaces, the guest decodes %XX). `commit` pins the
    image's commit (`-c ID`); `verify=False` gives `-n` (no SHA-1 checks)."""
    commit = check_commit(commit)
    cmd = [str(tender)]
    if memory:
        cmd.append(f"--mem={memory}")
    cmd.append(f"--block:storage={image}")
    if sector_size:
        cmd.append(f"--block-sector-size:storage={sector_size}")
    quoted = urllib.parse.quote(path.encode("utf-8", "surrogateescape"), safe="/")
    if len(quoted) > MAX_COMMAND_LINE:
        raise Solo5Error(f"path too long for the unikernel's command line "
                         f"({len(quoted)} bytes encoded, at most {MAX_COMMAND_LINE})")
    options = ([] if verify else ["-n"]) + (["-c", commit] if commit else [])
    return cmd + [str(unikernel), "--solo5:quiet", *options, verb, quoted or "/"]


def run_tender(cmd: list[str], timeout: float) -> RunResult:
    """Run a tender to its end; the guest's streams, checked. Raises
    Solo5Error when the guest did not get to say anything."""
    return run_tender_logged(cmd, timeout)[0]


def run_tender_logged(cmd: list[str], timeout: float) -> tuple[RunResult, str]:
    """`run_tender`, and the guest's log line (how many block reads)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = children.start(cmd, error=Solo5Error, stdout=out, stderr=err)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Solo5Error(f"the unikernel did not finish within {timeout:.0f} s") from None
        finally:
            children.stop(proc)
        out.seek(0)
        err.seek(0)
        console, errors = out.read(), err.read()
    streams, rest = parse_console(console)
    if "out" not in streams and "err" not in streams:
        raise Solo5Error(f"{Path(cmd[0]).name} exited with status {status} before the "
                         f"guest answered: {_last_line(errors, rest)}")
    if status != 0 and "err" not in streams:
        raise Solo5Error(f"the unikernel stopped with status {status}: "
                         f"{_last_line(rest, errors)}")
    return (RunResult(status, streams.get("out", b""), streams.get("err", b"")),
            streams.get("log", b"").decode(errors="replace").strip())


# --- NBD exports as files ---------------------------------------------------------

def _unmount(mountpoint: Path) -> None:
    for _attempt in range(50):   # busy while the tender's file is being closed
        done = subprocess.run(["fusermount3", "-u", str(mountpoint)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        if done.returncode == 0 or not os.path.ismount(mountpoint):
            return
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-uz", str(mountpoint)], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def nbdfuse_file(uri: str, timeout: float = 30.0) -> Iterator[Path]:
    """The NBD export `uri` as a read-only file, for the `with` block's time."""
    folder = Path(tempfile.mkdtemp(prefix="docteur-nbdfuse-"))
    mountpoint, pidfile = folder / "mnt", folder / "nbdfuse.pid"
    mountpoint.mkdir()
    proc = None
    try:
        with open(folder / "nbdfuse.err", "w+b") as errors:
            proc = children.start(
                ["nbdfuse", "-r", "-P", str(pidfile), f"{mountpoint}/image", uri],
                error=Solo5Error, hint="install Debian's libnbd-bin (nbdfuse) and fuse3",
                stdout=subprocess.DEVNULL, stderr=errors)
            deadline = time.monotonic() + timeout
            while not (pidfile.exists() and pidfile.stat().st_size):
                if proc.poll() is not None:
                    errors.seek(0)
                    raise Solo5Error(f"nbdfuse could not attach {uri}: "
                                     f"{_last_line(errors.read())}")
                if time.monotonic() > deadline:
                    raise Solo5Error(f"nbdfuse did not attach {uri} within {timeout:.0f} s")
                time.sleep(0.02)
        yield mountpoint / "image"
    finally:
        if proc is not None:
            if os.path.ismount(mountpoint):
                _unmount(mountpoint)
            try:
                proc.wait(timeout=5)   # nbdfuse exits once unmounted
            except subprocess.TimeoutExpired:
                pass
            children.stop(proc)
        if not os.path.ismount(mountpoint):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def block_file(target: str | Path, serve: str | None = None,
               progress: Progress = _quiet) -> Iterator[Path]:
    """A file the tender can attach for `target`.

    `target` is an image file or an NBD URI. With `serve` ("docteur" for the
    project's plugin, "file" for nbdkit's file plugin) an image file is
    first served with nbdkit (docteur_core.boot.runner.image_server), to run the whole
    chain: plugin -> NBD -> nbdfuse -> tender -> guest.
    """
    text = str(target)
    if is_uri(text):
        progress(f"attaching {text} with nbdfuse")
        with nbdfuse_file(text) as path:
            yield path
        return
    image = Path(text)
    if not image.is_file():
        what = "is a directory, not an image" if image.is_dir() else "no such image file"
        raise Solo5Error(f"{text}: {what}")
    if serve is None:
        yield image.resolve()
        return
    with image_server(image, serve) as server:
        progress(f"serving {text} with nbdkit ({serve}) on {server.uri}, attached with nbdfuse")
        with nbdfuse_file(server.uri) as path:
            yield path


# --- choosing a tender --------------------------------------------------------------

HVT_PROBE_BUDGET = 2.0   # seconds; spt reads the probe's file in ~0.01 s


def _probe_image(folder: Path) -> tuple[Path, bytes]:
    """A small real image (one 64 KiB file) and the file's bytes."""
    from ...make import make_image
    data = bytes(range(256)) * 256
    source = folder / "source"
    source.mkdir()
    (source / "probe.bin").write_bytes(data)
    make_image(source, folder / "probe.img", date="2000-01-01T00:00:00Z")
    return folder / "probe.img", data


def hvt_works(tenders: dict[str, Path], unikernels: dict[str, Path],
              progress: Progress = _quiet) -> bool:
    """Whether solo5-hvt runs the guest here, correctly and at a usable speed.

    It needs a usable /dev/kvm; some hosts have one that runs guests, but
    emulated a thousand times slower (a nested or software KVM), so the
    probe reads a 64 KiB file from a small image and must get it right
    within HVT_PROBE_BUDGET. Asked once per process and tender.
    """
    key = str(tenders["hvt"])
    if key in _hvt_works:
        return _hvt_works[key]
    with tempfile.TemporaryDirectory(prefix="docteur-probe-") as folder:
        image, data = _probe_image(Path(folder))
        cmd = tender_command(tenders["hvt"], unikernels["hvt"], image, "cat", "probe.bin")
        started = time.monotonic()
        try:
            result = run_tender(cmd, HVT_PROBE_BUDGET)
            works = result == (0, data, b"")
            why = "it answered wrongly" if not works else ""
        except Solo5Error as exc:
            works, why = False, str(exc)
    if not works:
        progress(f"solo5-hvt does not run well here ({why}): using solo5-spt")
    else:
        progress(f"solo5-hvt works here ({time.monotonic() - started:.2f} s for the probe)")
    _hvt_works[key] = works
    return works


def choose_tender(tender: str, tenders: dict[str, Path], unikernels: dict[str, Path],
                  progress: Progress = _quiet) -> str:
    if tender not in TENDER_CHOICES:
        raise Solo5Error(f"unknown tender {tender!r} (one of {', '.join(TENDER_CHOICES)})")
    if tender == "auto":
        return "hvt" if hvt_works(tenders, unikernels, progress) else "spt"
    return tender


def run(image_or_uri: str | Path, verb: str, path: str, tender: str = "spt",
        timeout: float = DEFAULT_TIMEOUT, *, memory: int | None = None,
        sector_size: int | None = None, serve: str | None = None,
        cache_dir: str | Path | None = None, solo5_source: str | Path | None = None,
        progress: Progress | None = None, commit: str | None = None,
        verify: bool = True) -> RunResult:
    """Run the guest once: `verb` ("cat" or "sha256") on `path` of the image.

    `image_or_uri`: an image file (attached directly, or served with nbdkit
    first when `serve` is "docteur" or "file") or an NBD URI (through
    nbdfuse). `tender`: "spt", "hvt" or "auto" (hvt if it works here).
    `commit` (40 hex digits) pins the image's commit: the guest refuses
    an image naming another (`error: wrong image: ...`). Without it the
    guest checks against the image's own header; `image_commit(file)`
    reads a local file's, to pin it before a server serves the file.
    `verify` (the default) has the guest check every object it reads, and
    the file whole before printing it, against its git id, back to that
    commit (`error: damaged image: SHA-1 mismatch ...`).
    Returns RunResult(status, stdout, stderr): status 0 with the file's
    bytes (or its `sha256 <hex>  <size>` line), or non-zero with one line
    `error: ...` in stderr. Raises Solo5Error when the guest could not run.
    """
    return run_many(image_or_uri, [(verb, path)], tender, timeout, memory=memory,
                    sector_size=sector_size, serve=serve, cache_dir=cache_dir,
                    solo5_source=solo5_source, progress=progress, commit=commit,
                    verify=verify)[0]


def run_many(image_or_uri: str | Path, commands: list[tuple[str, str]], tender: str = "spt",
             timeout: float = DEFAULT_TIMEOUT, *, memory: int | None = None,
             sector_size: int | None = None, serve: str | None = None,
             cache_dir: str | Path | None = None, solo5_source: str | Path | None = None,
             progress: Progress | None = None, commit: str | None = None,
             verify: bool = True) -> list[RunResult]:
    """`run` for several (verb, path) commands, one guest each, sharing the
    build, the tender choice and the attached block file."""
    progress = progress or _quiet
    commit = check_commit(commit)
    for verb, _ in commands:
        if verb not in VERBS:
            raise Solo5Error(f"unknown verb {verb!r} for the Solo5 guest (one of "
                             f"{', '.join(VERBS)})")
    tenders, unikernels = build(cache_dir, solo5_source, progress)
    chosen = choose_tender(tender, tenders, unikernels, progress)
    results = []
    with block_file(image_or_uri, serve, progress) as image:
        for verb, path in commands:
            cmd = tender_command(tenders[chosen], unikernels[chosen], image, verb, path,
                                 memory, sector_size, commit=commit, verify=verify)
            started = time.monotonic()
            result, log = run_tender_logged(cmd, timeout)
            results.append(result)
            progress(f"solo5-{chosen}: {verb} {path}: status {result.status}, "
                     f"{time.monotonic() - started:.2f} s, {log or 'no log'}")
    return results
