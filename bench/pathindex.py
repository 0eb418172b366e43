"""Path index benchmark: its size against the pack's, open time and cold lookups.

    python3 bench/pathindex.py --corpus /tmp/bench/django --corpus gen:100000 \\
        --ref /path/to/another/checkout

For each corpus and each checkout (this one, and --ref's in the same run:
images built by each checkout's own `make_image`, in a fresh interpreter),
prints the PACK's bytes, the path index region's, the whole image's and
the region's share of the pack; the median time of `Image.open` (fast
mode, path index, fresh interpreter); and the device reads of one lookup
on a freshly opened image (requests below the sector cache), verified and
--no-verify, over 50 sampled paths. `--synthetic N` also encodes, with
this checkout only, an index of N generated paths (100 files a folder,
100 folders a group) against a fake IDX and counts the reads of cold
lookups (pages, plus the IDX name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from read import corpus_dir  # noqa: E402

CHILD = r"""
import json, random, statistics, sys, time
sys.path.insert(0, sys.argv[1])
img, action = sys.argv[2], sys.argv[3]
if action == "build":
    from docteur_core.make import make_image
    t = time.perf_counter()
    make_image(sys.argv[4], img)
    print(json.dumps({"build": time.perf_counter() - t}))
    sys.exit(0)
from docteur_core.reader import Image
from docteur_core.blockdev.block import FileDevice
data = open(img, "rb").read()
idx_offset = int.from_bytes(data[20:28], "little")
region = int.from_bytes(data[-4096 + 100:-4096 + 108], "little")
with Image.open(img, "fast", verify=False, path_index=False) as im:
    trailer = im.store.pack_end
    files = [n.path for n in im.files()]
class Counting:
    def __init__(self, dev):
        self.dev, self.reads = dev, 0
        self.block_size, self.capacity = dev.block_size, dev.capacity
    def read(self, o, n):
        self.reads += 1
        return self.dev.read(o, n)
    def close(self):
        self.dev.close()
sample = random.Random(1).sample(files, min(50, len(files)))
out = {"image": len(data), "pack": trailer + 20 - 28, "region": len(data) - region,
       "paths": len(files)}
for verify in (True, False):
    counts = []
    for p in sample:
        dev = Counting(FileDevice(img))
        im = Image.open(dev, "fast", verify=verify)
        before = dev.reads
        assert im.exists(p) == "value"
        counts.append(dev.reads - before)
        dev.close()
    out["verified" if verify else "unverified"] = [statistics.mean(counts), max(counts)]
    out["indexed"] = im.path_index is not None
print(json.dumps(out))
"""

OPEN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from docteur_core.reader import Image
t = time.perf_counter()
im = Image.open(sys.argv[2], "fast")
print(time.perf_counter() - t)
"""


def child(checkout: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkout), *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def open_ms(checkout: Path, img: Path, repeat: int = 7) -> float:
    times = [float(subprocess.run([sys.executable, "-c", OPEN, str(checkout), str(img)],
                                  check=True, capture_output=True, text=True).stdout)
             for _ in range(repeat)]
    return statistics.median(times) * 1000


def synthetic(n: int) -> str:
    import hashlib
    import random

    sys.path.insert(0, str(HERE.parent))
    from docteur_core.format import idx as idxmod
    from docteur_core.format import pathindex as pix
    from docteur_core.reader.pathindex import PathIndex

    rows: dict[bytes, list] = {}
    ids: list[bytes] = []

    def new_id(i: int) -> bytes:  # random ids: random IDX positions, as git's
        oid = hashlib.sha1(i.to_bytes(8, "big")).digest()
        ids.append(oid)
        return oid

    groups = []
    k = 0
    for g in range(-(-n // 10000)):
        folders = []
        for f in range(100):
            start = g * 10000 + f * 100
            if start >= n:
                break
            files = [(0o100644, f"file{i:07d}.txt".encode(), new_id(k := k + 1))
                     for i in range(start, min(start + 100, n))]
            tid = new_id(k := k + 1)
            rows[tid] = files
            folders.append((0o40000, f"b{f:02d}".encode(), tid))
        tid = new_id(k := k + 1)
        rows[tid] = folders
        groups.append((0o40000, f"a{g:03d}".encode(), tid))
    root = new_id(k := k + 1)
    rows[root] = groups
    # Offsets as git writes a folder's objects: near each other, 100 bytes apart.
    offset = {oid: 40 + 100 * i for i, oid in enumerate(ids)}
    ids.sort()
    position = {oid: i for i, oid in enumerate(ids)}
    idx_base = 4096
    fan = [0] * 256
    for oid in ids:
        fan[oid[0]] += 1
    for i in range(1, 256):
        fan[i] += fan[i - 1]
    head = idxmod.Idx(idx_base, tuple(fan))
    pack_end = 40 + 100 * (k + 2)
    region_start = -(-(idx_base + idxmod.HEAD_SIZE + 28 * len(ids)) // 4096) * 4096
    if region_start <= pack_end:
        region_start = -(-(pack_end + 64) // 4096) * 4096
    region = pix.encode(root, rows.__getitem__, position.__getitem__, offset.__getitem__,
                        commit=bytes(20), pack_checksum=bytes(20), commit_offset=40,
                        tree_offset=40, pack_end=pack_end, region_start=region_start,
                        block_size=4096)
    data = bytearray(region_start) + region
    names = b"".join(ids)
    data[idx_base + idxmod.HEAD_SIZE:idx_base + idxmod.HEAD_SIZE + len(names)] = names
    data = bytes(data)
    sup = pix.parse_super(data[-4096:], len(data))
    reads = []
    sample = random.Random(2).sample(range(n), 200)
    for i in sample:
        count = [0]

        def pread(o: int, m: int) -> bytes:
            count[0] += 1
            return data[o:o + m]

        index = PathIndex(pread, len(data), sup, pack_start=40, idx=head)
        path = f"a{i // 10000:03d}/b{i // 100 % 100:02d}/file{i:07d}.txt".encode()
        e = index.find(pix.key_of(path))
        assert e is not None and e.mode == 0o100644
        reads.append(count[0])
    return (f"synthetic {n:,} files ({sup.paths:,} paths): region {len(region):,} bytes "
            f"({len(region) / max(1, sup.paths):.1f} B a path), {sup.records:,} records in "
            f"{sup.pages:,} pages; cold lookup {statistics.mean(reads):.2f} reads "
            f"(max {max(reads)}): pages and the IDX name")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", action="append", default=[])
    p.add_argument("--ref", help="another checkout, measured in the same run")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "docteur-bench-pix"))
    p.add_argument("--synthetic", type=int, action="append", default=[])
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkouts = [("this", HERE.parent)] + ([("ref", Path(args.ref))] if args.ref else [])
    table = ["| corpus | checkout | PACK | path index | image | index/pack | open | "
             "cold lookup reads, verified | --no-verify | build |", "|---" * 10 + "|"]
    for spec in args.corpus:
        name, src = corpus_dir(spec, work)
        for label, checkout in checkouts:
            img = work / f"{name.replace(' ', '_')}.{label}.img"
            built = child(checkout, str(img), "build", str(src))
            m = child(checkout, str(img), "measure")
            t = open_ms(checkout, img)
            line = (f"| {name} | {label} | {m['pack']:,} | {m['region']:,} | {m['image']:,} | "
                    f"{m['region'] / m['pack']:.1%} | {t:.2f} ms | "
                    f"{m['verified'][0]:.1f} (max {m['verified'][1]}) | "
                    f"{m['unverified'][0]:.1f} (max {m['unverified'][1]}) | "
                    f"{built['build']:.0f} s |")
            print(line, flush=True)
            table.append(line)
    for n in args.synthetic:
        line = synthetic(n)
        print(line, flush=True)
        table.append(f"| {line} |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
