"""Time `docteur verify` against `git verify-pack` on the same pack, same run.

    python3 bench/verify.py                        # requests corpus (20 releases)
    python3 bench/verify.py --corpus /tmp/corpus-django --corpus synthetic:50000
    python3 bench/verify.py --image disk.img       # an existing image
    python3 bench/verify.py --nbd                  # also verify over nbdkit's file plugin

For each image: the pack and its idx are cut out of the image into a scratch
directory, then `git verify-pack` (git's full check: every object inflated,
deltas resolved, SHA-1s and the idx compared) and `verify_image` (full, then
quick) each run `--repeat` times; the best time of each is reported with
the ratio verify / git (goal: at most 2). Images are built once with
`docteur_core.build.make_image` and kept in `--workdir`.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docteur_core.format import layout  # noqa: E402
from docteur_core.blockdev.block import FileDevice  # noqa: E402
from docteur_core.verify import verify_image  # noqa: E402

SHARED = ROOT.parent / "shared" / "corpus"


def unpack_requests(dest: Path) -> Path:
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".tmp")
        subprocess.run(["bash", str(SHARED / "unpack.sh"), "requests", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        tmp.rename(dest)
    return dest


def synthetic(dest: Path, files: int) -> Path:
    """`files` small text files in versions of one another: many objects, many deltas."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    rnd = random.Random(files)
    words = [bytes(rnd.choice(b"abcdefghijklmnop ") for _ in range(9)) for _ in range(2000)]
    originals = [b"\n".join(rnd.choice(words) for _ in range(rnd.randrange(20, 400)))
                 for _ in range(max(1, files // 10))]
    for i in range(files):
        text = bytearray(originals[i % len(originals)])
        for _ in range(rnd.randrange(0, 4)):
            at = rnd.randrange(len(text) + 1)
            text[at:at] = rnd.choice(words)
        d = tmp / f"d{i // 500:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes(bytes(text))
    tmp.rename(dest)
    return dest


def build(source: Path, image: Path) -> float:
    from docteur_core.build import make_image

    if image.exists():
        return 0.0
    t = time.perf_counter()
    make_image(source, image, date="2020-01-01T00:00:00Z", message="bench\n")
    return time.perf_counter() - t


def cut_pack(image: Path, out: Path) -> Path:
    """Write the image's PACK and IDX as out/pack-x.{pack,idx}; return the idx."""
    with open(image, "rb") as f:
        head = f.read(28)
        idx_offset = struct.unpack_from("<Q", head, 20)[0]
        f.seek(idx_offset)
        fan = f.read(1032)
        count = struct.unpack_from(">I", fan, 8 + 4 * 255)[0]
        main = fan + f.read(28 * count)
        offsets = main[1032 + 24 * count:]
        large = sum(1 for b in offsets[0::4] if b & 0x80)
        idx = main + f.read(8 * large + 40)
        copy = idx[-40:-20]
        size = os.fstat(f.fileno()).st_size
        pack_end, why = layout.locate_pack_trailer(lambda o, n: os.pread(f.fileno(), n, o),
                                                   idx_offset, size, copy)
        if pack_end is None:
            raise SystemExit(f"{image}: {why}")
        trailer = pack_end - 20
        f.seek(28)
        body = f.read(trailer + 20 - 28)
    (out / "pack-x.pack").write_bytes(body)
    (out / "pack-x.idx").write_bytes(idx)
    return out / "pack-x.idx"


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child
# would report the bench's own peak.
_RSS = """
import sys
sys.path.insert(0, {root!r})
from docteur_core.blockdev.block import FileDevice
from docteur_core.verify import verify_image
if sys.argv[1] != "-":
    with FileDevice(sys.argv[1]) as dev:
        assert verify_image(dev).ok
print(next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:")))
"""


def peak_rss_mib(image: Path) -> float:
    """Peak RSS of a fresh process verifying `image`, above one that only imports."""
    code = _RSS.format(root=str(ROOT))
    run = lambda arg: int(subprocess.run([sys.executable, "-c", code, arg], check=True,
                                         capture_output=True, text=True).stdout)
    return (run(str(image)) - run("-")) / 1024


def bench_image(image: Path, repeat: int, nbd: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="vbench-") as tmp:
        idx = cut_pack(image, Path(tmp))
        git_time, _ = best(lambda: subprocess.run(["git", "verify-pack", str(idx)], check=True,
                                                  stdout=subprocess.DEVNULL), repeat)

        def full():
            with FileDevice(image) as dev:
                return verify_image(dev)

        def quick():
            with FileDevice(image) as dev:
                return verify_image(dev, quick=True)

        full_time, report = best(full, repeat)
        quick_time, _ = best(quick, repeat)
        row = {"image": str(image), "size": image.stat().st_size,
               "objects": report.counts.objects, "deltas": report.counts.deltas,
               "files": report.counts.files, "ok": report.ok, "git": git_time,
               "verify": full_time, "quick": quick_time, "ratio": full_time / git_time,
               "cache": report.stats, "rss": peak_rss_mib(image)}
        if nbd:
            sys.path.insert(0, str(ROOT))
            from docteur_core.blockdev.device import open_device
            from tests.support import NbdkitServer

            with NbdkitServer("file", f"file={image}", unix=True) as server:
                def over_nbd():
                    dev = open_device(server.uri)
                    try:
                        return verify_image(dev)
                    finally:
                        dev.close()
                row["nbd"], r = best(over_nbd, repeat)
                assert r.ok
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", default=[],
                        help="'requests', 'synthetic:N' or a directory (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an existing image")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "verify-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nbd", action="store_true", help="also verify over nbdkit (file)")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    images = [Path(p) for p in args.image]
    for corpus in args.corpus or ([] if images else ["requests"]):
        if corpus == "requests":
            source, name = unpack_requests(work / "corpus-requests"), "requests"
        elif corpus.startswith("synthetic:"):
            n = int(corpus.split(":", 1)[1])
            source, name = synthetic(work / f"corpus-synthetic-{n}", n), f"synthetic-{n}"
        else:
            source, name = Path(corpus), Path(corpus).name
        image = work / f"{name}.img"
        took = build(source, image)
        if took:
            print(f"built {image} in {took:.1f} s", file=sys.stderr)
        images.append(image)
    print(f"{'image':<28} {'size':>12} {'objects':>8} {'deltas':>7} {'git':>8} {'verify':>8} "
          f"{'ratio':>6} {'quick':>8} {'+RSS':>8}" + (f" {'nbd':>8}" if args.nbd else ""))
    worst = 0.0
    for image in images:
        row = bench_image(image, args.repeat, args.nbd)
        worst = max(worst, row["ratio"])
        print(f"{Path(row['image']).name:<28} {row['size']:>12,} {row['objects']:>8,} "
              f"{row['deltas']:>7,} {row['git']:>7.3f}s {row['verify']:>7.3f}s "
              f"{row['ratio']:>5.2f}x {row['quick']:>7.3f}s {row['rss']:>5.0f}MiB"
              + (f" {row['nbd']:>7.3f}s" if args.nbd else "")
              + ("" if row["ok"] else "  NOT OK"))
        print(f"  delta bases: {row['cache']}", file=sys.stderr)
    print(f"worst ratio verify/git verify-pack: {worst:.2f} (goal <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
