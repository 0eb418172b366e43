"""Time a real image larger than 2 GiB: build, read the last file, verify.

    python3 bench/large.py                     # 4 x 560 MiB + 64 small files, in $TMPDIR
    python3 bench/large.py --big-mib 560 --big 4 --workdir /var/tmp --keep

The source directory holds incompressible random data (so the pack is as
big as the data): `--big` files of `--big-mib` MiB, above git's
core.bigFileThreshold (512m, pinned by the builder) so that pack-objects
streams them instead of holding them for the delta search, then small
files `z-NNN` that git packs after them, at offsets beyond 2^31. The bench
runs `docteur make`, checks that the image's IDX has a non-empty 64-bit
offset table and which files live beyond 2^31, reads the last of them
back with `docteur_core.reader.Image` (fast and light modes) and runs
`docteur verify --quick` (and the full verify unless --no-full). It
prints each time and the peak disk use (free space sampled during the
build), then deletes everything unless --keep.

Why not a CI test: the build needs the source, the builder's scratch pack,
git's pack and the image at once, about 4x the data (~9 GiB for 2.2 GiB).
`tests/format/test_large_image.py` forces the 64-bit table on a small pack instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docteur_core.format import layout  # noqa: E402

MIB = 1 << 20
CHUNK = 8 * MIB


def write_random(path: Path, size: int) -> str:
    """Write `size` random bytes; return their git blob id."""
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(CHUNK, left))
            h.update(data)
            f.write(data)
            left -= len(data)
    return h.hexdigest()


def large_offsets(image: Path) -> tuple[int, dict[str, int]]:
    """(entries in the 64-bit table, {blob hex: offset} for offsets >= 2^31)."""
    with open(image, "rb") as f:
        header = layout.parse_header(f.read(layout.HEADER_SIZE))
        f.seek(header.idx_offset)
        head = f.read(8 + 1024)
        count = struct.unpack_from(">I", head, 8 + 255 * 4)[0]
        ids = f.read(20 * count)
        f.seek(4 * count, os.SEEK_CUR)  # CRC-32s
        small = struct.unpack(f">{count}I", f.read(4 * count))
        n_large = sum(1 for o in small if o & 0x80000000)
        large = struct.unpack(f">{n_large}Q", f.read(8 * n_large))
    beyond = {}
    for i, o in enumerate(small):
        if o & 0x80000000:
            beyond[ids[20 * i:20 * i + 20].hex()] = large[o & 0x7FFFFFFF] + layout.PACK_OFFSET
    return n_large, beyond


class DiskSampler(threading.Thread):
    """Lowest free space seen on a file system while running."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.start_free = shutil.disk_usage(path).free
        self.min_free = self.start_free
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.min_free = min(self.min_free, shutil.disk_usage(self.path).free)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.start_free - self.min_free


def timed(label: str, fn):
    t = time.monotonic()
    value = fn()
    elapsed = time.monotonic() - t
    print(f"{label:<34} {elapsed:8.1f} s", flush=True)
    return value, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=4, help="number of big files (default 4)")
    ap.add_argument("--big-mib", type=int, default=560, help="size of each big file in MiB")
    ap.add_argument("--small", type=int, default=64, help="small files after them")
    ap.add_argument("--workdir", default=None, help="where to work (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the source and image")
    ap.add_argument("--no-full", action="store_true", help="skip the full verify")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="docteur-large-", dir=args.workdir))
    src, image = work / "src", work / "large.img"
    src.mkdir()
    docteur = [sys.executable, "-m", "docteur_core"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        def generate() -> dict[str, str]:
            blobs = {}
            for i in range(args.big):
                blobs[f"big-{i}"] = write_random(src / f"big-{i}", args.big_mib * MIB)
            for i in range(args.small):
                blobs[f"z-{i:03d}"] = write_random(src / f"z-{i:03d}", 4096 + 997 * i)
            return blobs
        blobs, _ = timed("generate source", generate)
        total = sum(p.stat().st_size for p in src.iterdir())
        print(f"source: {len(blobs)} files, {total / 2**30:.2f} GiB", flush=True)

        sampler = DiskSampler(work)
        sampler.start()
        _, t_make = timed("docteur make", lambda: subprocess.run(
            [*docteur, "make", "-q", "--date", "2026-01-01T00:00:00Z", str(src), str(image)],
            env=env, check=True))
        peak = sampler.stop()
        size = image.stat().st_size
        print(f"image: {size / 2**30:.3f} GiB ({size} bytes); peak extra disk during make "
              f"{peak / 2**30:.2f} GiB (source excluded)", flush=True)

        n_large, beyond = large_offsets(image)
        names = {v: k for k, v in blobs.items()}
        far = sorted((off, names[h]) for h, off in beyond.items() if h in names)
        shown = f"{far[0][1]} .. {far[-1][1]}" if len(far) > 1 else (far[0][1] if far else "")
        print(f"idx: {n_large} entries in the 64-bit offset table; {len(far)} files beyond "
              f"2^31 ({shown})", flush=True)
        if n_large == 0 or not far:
            print("FAIL: nothing beyond 2^31", file=sys.stderr)
            return 1
        last_off, last = far[-1]
        expected = (src / last).read_bytes()

        from docteur_core.reader import Image
        for mode in ("fast", "light"):
            def read(mode=mode) -> bytes:
                with Image.open(str(image), mode) as img:
                    return img.get(last)
            got, _ = timed(f"reader {mode}: open + get {last}", read)
            if got != expected:
                print(f"FAIL: reader ({mode}) returned other bytes for {last}", file=sys.stderr)
                return 1
        print(f"  ({last} is at image offset {last_off}, {last_off / 2**30:.3f} GiB)")

        proc, _ = timed("docteur verify --quick", lambda: subprocess.run(
            [*docteur, "verify", "--quick", str(image)], env=env, capture_output=True,
            text=True))
        if proc.returncode != 0:
            print(f"FAIL: verify --quick: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        if not args.no_full:
            proc, _ = timed("docteur verify (full)", lambda: subprocess.run(
                [*docteur, "verify", str(image)], env=env, capture_output=True, text=True))
            if proc.returncode != 0:
                print(f"FAIL: verify: {proc.stderr.strip()}", file=sys.stderr)
                return 1
        print(f"make throughput: {total / MIB / t_make:.0f} MiB/s")
        return 0
    finally:
        if args.keep:
            print(f"kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
