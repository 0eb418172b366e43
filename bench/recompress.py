#!/usr/bin/env python3
"""What each zlib encoder costs and saves on one pack: the re-encoding pass alone.

usage: python3 bench/recompress.py IMAGE [--encoders libdeflate:9,libdeflate:12,zopfli:15]
                                         [--workers N]

IMAGE is a `docteur make --compress default` image (git's zlib streams).
Its PACK and IDX are copied out, and for each encoder (LIBRARY:LEVEL, the
level being zopfli's iteration count; several joined with `+` are tried in
turn on each entry, the shortest kept: `libdeflate:12+zopfli:15` is
`--compress zopfli`) `recompress_pack` re-encodes the copy
on N workers (default: the usable cores), as `docteur make --compress max`
does after the delta search. Prints, per encoder, the pack's size as a
ratio of git's streams and the seconds (wall and CPU) the pass took: add
them to a default build's time to know what that level would cost as a
default. `bench/make.py` times whole builds against git in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from docteur_core.format import idx as idxmod  # noqa: E402
from docteur_core.format import layout  # noqa: E402
from docteur_core.format.encoders import Encoder  # noqa: E402
from docteur_core.make.recompress import recompress_pack  # noqa: E402


def pack_and_idx(image: Path, out: Path) -> tuple[Path, Path]:
    """The PACK and IDX regions of `image`, written to out/x.pack and out/x.idx."""
    data = image.read_bytes()
    header = layout.parse_header(data, len(data))
    ix = idxmod.parse_head(data[header.idx_offset:header.idx_offset + idxmod.HEAD_SIZE],
                           header.idx_offset)
    checksum_at = ix.trailer_at(0)
    checksum = data[checksum_at:checksum_at + 20]
    lo = layout.pack_tail_start(header.idx_offset, len(data))
    pack_end = lo + data[lo:header.idx_offset].rfind(checksum) + 20
    pack, idx = out / "x.pack", out / "x.idx"
    pack.write_bytes(data[layout.PACK_OFFSET:pack_end])
    idx.write_bytes(data[header.idx_offset:checksum_at + 40])
    return pack, idx


def cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--encoders", default="libdeflate:9,libdeflate:10,libdeflate:11,"
                                              "libdeflate:12")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recompress-") as tmp:
        pack, idx = pack_and_idx(args.image, Path(tmp))
        git_size = pack.stat().st_size
        print(f"{args.image}: git's pack {git_size:,} B")
        for spec in args.encoders.split(","):
            encoders = []
            for one in spec.split("+"):
                library, _, level = one.partition(":")
                encoders.append(Encoder(library, int(level)))
            p, i = Path(tmp) / "y.pack", Path(tmp) / "y.idx"
            shutil.copy(pack, p)
            shutil.copy(idx, i)
            c, t = cpu(), time.perf_counter()
            _, new = recompress_pack(str(p), str(i), encoders, workers=args.workers)
            wall, used = time.perf_counter() - t, cpu() - c
            name = " then ".join(e.describe() for e in encoders)
            print(f"  {name:24} pack {new:>12,} B = {new / git_size:.4f} x git's "
                  f"streams, {wall:7.2f} s ({used:.2f} s CPU)  load {os.getloadavg()[0]:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
