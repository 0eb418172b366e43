"""Time `docteur verify` against `git verify-pack` on the same pack, same run.

    python3 bench/verify.py                        # tiny:100000, django-like, requests
    python3 bench/verify.py --corpus /tmp/corpus-django --corpus synthetic:50000
    python3 bench/verify.py --image disk.img       # an existing image (e.g. a Linux tree's)

Corpora: `tiny:N` (N tiny distinct files, 100 a folder: the per-object
cost), `django-like` (generated releases of a source tree of a few thousand
files, each release changing some of them: the delta-heavy case), `requests`
(20 real releases, from ../shared beside the checkout or $DOCTEUR_SHARED;
skipped with a message without it), `synthetic:N` or a directory.
Both sides run in fresh processes (bench/measure.py): best wall time, CPU
time and peak RSS of each, with the machine's load before and after.
    python3 bench/verify.py --nbd                  # also verify over nbdkit's file plugin

For each image: the pack and its idx are cut out of the image into a scratch
directory, then `git verify-pack` (git's full check: every object inflated,
deltas resolved, SHA-1s and the idx compared) and `verify_image` (full, then
quick) each run `--repeat` times; the best time of each is reported with
the ratio verify / git (goal: at most 2). Images are built once with
`docteur_core.make.make_image` and kept in `--workdir`.
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

sys.path.insert(0, str(ROOT / "bench"))
from measure import Measured, best as best_run, find_shared, load  # noqa: E402

_shared = find_shared(ROOT)
SHARED = _shared / "corpus" if _shared else None


def unpack_requests(dest: Path) -> Path:
    if SHARED is None:
        raise FileNotFoundError("the requests corpus needs ../shared/corpus beside this "
                                "checkout (or $DOCTEUR_SHARED): skipped")
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


def tiny(dest: Path, files: int) -> Path:
    """`files` tiny distinct files, 100 a folder (bench/read.py's gen:N)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    for i in range(files):
        d = tmp / f"a{i // 10000:02d}" / f"b{i // 100 % 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:06d}.txt").write_text(f"generated file {i}\n" * (1 + i % 7))
    tmp.rename(dest)
    return dest


def django_like(dest: Path, releases: int = 8, files: int = 2500) -> Path:
    """Releases of a generated source tree, as a folder each (like ../shared's
    unpacked sdists): files of a few KiB, a tenth of them edited a little
    from one release to the next, a few added."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    rnd = random.Random(5)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rnd.randrange(2, 12)))
             for _ in range(3000)]

    def text() -> bytearray:
        return bytearray(b"\n".join(b"    " * rnd.randrange(4) + b" ".join(
            rnd.choice(words) for _ in range(rnd.randrange(2, 10)))
            for _ in range(rnd.randrange(20, 300))) + b"\n")

    tree = {f"pkg/m{i // 60:03d}/f{i:05d}.py": text() for i in range(files)}
    for r in range(releases):
        for name in rnd.sample(sorted(tree), len(tree) // 10):
            body = tree[name]
            at = rnd.randrange(len(body) + 1)
            body[at:at] = b" ".join(rnd.choice(words) for _ in range(rnd.randrange(1, 20)))
        for i in range(files // 50):
            tree[f"pkg/new{r}/g{i:04d}.py"] = text()
        for name, body in tree.items():
            path = tmp / f"project-1.{r}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(body))
    tmp.rename(dest)
    return dest


def build(source: Path, image: Path) -> float:
    from docteur_core.make import make_image

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


_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from docteur_core.blockdev.block import FileDevice
from docteur_core.verify import verify_image
with FileDevice(sys.argv[2]) as dev:
    r = verify_image(dev)
print(json.dumps({"ok": r.ok, "objects": r.counts.objects, "deltas": r.counts.deltas,
                  "stats": r.stats}))
"""


def bench_image(image: Path, repeat: int, nbd: bool) -> dict:
    """git verify-pack and docteur's full check, each in fresh processes (time,
    CPU, peak RSS), then the quick check in process."""
    import json

    with tempfile.TemporaryDirectory(prefix="vbench-") as tmp:
        idx = cut_pack(image, Path(tmp))
        git = best_run(["git", "verify-pack", str(idx)], repeat)
        full = best_run([sys.executable, "-c", _CHILD, str(ROOT), str(image)], repeat,
                        keep_output=True)
        report = json.loads(full.out)

        def quick():
            with FileDevice(image) as dev:
                return verify_image(dev, quick=True)

        quick_time, _ = best(quick, repeat)
        row = {"image": str(image), "size": image.stat().st_size,
               "objects": report["objects"], "deltas": report["deltas"], "ok": report["ok"],
               "git": git, "verify": full, "quick": quick_time,
               "ratio": full.wall / git.wall, "cache": report["stats"]}
        if nbd:
            sys.path.insert(0, str(ROOT))
            from docteur_core.blockdev.device import open_device
            from tests.helpers.support import NbdkitServer

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
                        help="'tiny:N', 'django-like', 'requests', 'synthetic:N' or a "
                             "directory (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an existing image")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "verify-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nbd", action="store_true", help="also verify over nbdkit (file)")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    images = [Path(p) for p in args.image]
    print(f"machine: {load()}", flush=True)
    for corpus in args.corpus or ([] if images else ["tiny:100000", "django-like", "requests"]):
        try:
            if corpus == "requests":
                source, name = unpack_requests(work / "corpus-requests"), "requests"
            elif corpus.startswith("synthetic:"):
                n = int(corpus.split(":", 1)[1])
                source, name = synthetic(work / f"corpus-synthetic-{n}", n), f"synthetic-{n}"
            elif corpus.startswith("tiny:"):
                n = int(corpus.split(":", 1)[1])
                source, name = tiny(work / f"corpus-tiny-{n}", n), f"tiny-{n}"
            elif corpus == "django-like":
                source, name = django_like(work / "corpus-django-like"), "django-like"
            else:
                source, name = Path(corpus), Path(corpus).name
        except FileNotFoundError as exc:
            print(f"{corpus}: {exc}", file=sys.stderr)
            continue
        image = work / f"{name}.img"
        took = build(source, image)
        if took:
            print(f"built {image} in {took:.1f} s", file=sys.stderr)
        images.append(image)
    table = ["| image | objects | deltas | git verify-pack | docteur verify | ratio | quick |",
             "|---|---|---|---|---|---|---|"]
    worst = 0.0
    for image in images:
        row = bench_image(image, args.repeat, args.nbd)
        worst = max(worst, row["ratio"])
        git, ver = row["git"], row["verify"]
        line = (f"| {image.name} ({row['size']:,} bytes) | {row['objects']:,} | "
                f"{row['deltas']:,} | {git} | {ver} | {ver.ratio(git)} | "
                f"{row['quick']:.3f} s |" + (f" nbd {row['nbd']:.3f} s |" if args.nbd else "")
                + ("" if row["ok"] else " NOT OK |"))
        print(line, flush=True)
        print(f"  delta bases: {row['cache']}", file=sys.stderr)
        table.append(line)
    print("\n" + "\n".join(table))
    print(f"worst ratio verify/git verify-pack: {worst:.2f} (goal <= 2; Django and Linux "
          "<= 1.2)")
    print(f"machine after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
