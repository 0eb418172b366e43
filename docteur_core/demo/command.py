"""`docteur demo`: build, verify, serve and boot on the built-in example site."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATE = "2026-01-01T00:00:00Z"  # fixed, so the demo's image is the same everywhere


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Run the whole system on the built-in example site, step by step.

    Builds an image of the example site that ships with docteur (or of
    SOURCE), verifies it, shows its tree, serves it with the project's nbdkit
    plugin (what `docteur serve` runs), then boots a QEMU guest on that NBD
    export that reads files through its virtio disk, in light then fast mode.
    The first run builds the guest's kernel and initramfs (about 30 s and a
    download of Debian's kernel package); later runs take about 10 s.
    """
    parser.add_argument("source", nargs="?", metavar="SOURCE",
                        help="what to build instead of the example site")
    parser.add_argument("--work", type=Path, metavar="DIR",
                        help="where the image goes (default: a temporary folder, removed after)")


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(*argv: str) -> None:
    """A docteur command as a user would type it, its output shown."""
    print("$ docteur " + " ".join(argv), flush=True)
    done = subprocess.run([sys.executable, "-m", "docteur_core", *argv])
    if done.returncode != 0:
        from ..errors import DocteurError
        raise DocteurError(f"`docteur {' '.join(argv)}` failed (status {done.returncode})")


def run(args: argparse.Namespace) -> int:
    from ..boot.runner import image_server
    from . import SITE

    started = time.monotonic()
    source = Path(args.source) if args.source else SITE
    with tempfile.TemporaryDirectory(prefix="docteur-demo-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        image = work / "site.img"

        _step(f"building {image} from {source}")
        _run("make", "--date", DATE, str(source), str(image))
        _step("checking every object and printing the snapshot it holds")
        _run("verify", str(image))
        _step("what the image holds, read on the host by the block reader")
        _run("tree", str(image))

        _step("serving it over NBD with the project's nbdkit plugin")
        with image_server(image) as server:
            print(f"serving at {server.uri}", flush=True)
            subprocess.run(["nbdinfo", server.uri], check=False)
            if args.source:
                _step("booting a QEMU guest (TCG) on that export: ls, in light and fast mode")
                _run("boot", server.uri, "ls", ";", "--mode", "fast", "ls")
            else:
                _step("booting a QEMU guest (TCG) on that export: it reads the files through "
                      "/dev/vda, in light then fast mode")
                _run("boot", server.uri, "--mode", "light", "cat", "index.html", ";", "ls", ";",
                     "ls", "docs/guide", ";", "cat", "assets/noise.bin", ";",
                     "--mode", "fast", "cat", "index.html", ";", "--mode", "fast", "ls",
                     "docs/guide", ";", "--mode", "fast", "cat", "docs/guide/getting-started.md")
        if not args.source:
            _step("the same binary file on the host, to compare with the guest's digest")
            digest = hashlib.sha256((SITE / "assets" / "noise.bin").read_bytes()).hexdigest()
            print(f"{digest}  assets/noise.bin")
    _step(f"done in {time.monotonic() - started:.0f} s")
    return 0


COMMANDS = {"demo": (add_arguments, run)}
