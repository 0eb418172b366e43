"""Reader benchmark: open time and memory, cold lookups, read-everything vs git.

    python3 bench/read.py                       # requests + generated 10k and 100k files + 24 MiB delta
    python3 bench/read.py --corpus gen:10000 --corpus gen:100000 --corpus gen:1000000
    python3 bench/read.py --big-delta 24        # one 24 MiB file stored as a delta vs git cat-file
    python3 bench/read.py --read-all linux.img  # every file of an existing image vs git

For each corpus an image is built with `make_image` (path index included;
kept in --work), then, in the same run, in fast and light modes, with the
path index and without it (`path_index=False`: the IDX and the trees, as an
image made by the OCaml docteur is read):
- open time and peak memory growth, in a fresh interpreter each time,
  against `git ls-tree -r` on the same pack;
- cold lookups: device reads of one lookup on a freshly opened image
  (requests that reach the device, below the sector cache);
- time to read every file (open, walk, read) against `git cat-file --batch`
  of the same blobs and `git cat-file --batch-all-objects --batch`, on the
  image's PACK and IDX copied into a bare repository.
Numbers are medians of --repeat runs; a markdown table ends the output.
The requests corpus comes from ../shared beside the checkout (or
$DOCTEUR_SHARED); without it that corpus is skipped with a message.

--big-delta: `docteur cat` of one large file stored as a delta (two
versions of a generated text file in one tree) against `git cat-file
blob`; --read-all: every file of an existing image (a Linux tree's takes
12 minutes to build: build it once) against `git cat-file
--batch-all-objects --batch`. Both run the commands in fresh processes and
report the best wall time, CPU time and peak RSS of each (bench/measure.py),
with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docteur_core.format import idx as idxmod  # noqa: E402
from docteur_core.reader import Image  # noqa: E402

from measure import Measured, best, find_shared, load  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = find_shared(HERE.parent)  # ../shared beside the checkout, or $DOCTEUR_SHARED
# `docteur` of this checkout, whichever is installed.
DOCTEUR = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); "
           "from docteur_core.cli import main; sys.exit(main())"]


def generate(root: Path, n: int) -> None:
    """n small distinct files, 100 a directory, three levels deep."""
    for i in range(n):
        d = root / f"a{i // 10000:02d}" / f"b{i // 100 % 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:06d}.txt").write_text(f"generated file {i}\n" * (1 + i % 7))


def corpus_dir(spec: str, work: Path) -> tuple[str, Path]:
    if spec.startswith("gen:"):
        n = int(spec[4:])
        d = work / f"gen{n}"
        if not d.exists():
            tmp = work / f"gen{n}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            generate(tmp, n)
            tmp.rename(d)
        return f"generated {n} files", d
    if spec == "requests":
        if SHARED is None:
            raise FileNotFoundError("the requests corpus needs ../shared/corpus beside this "
                                    "checkout (or $DOCTEUR_SHARED): skipped")
        d = work / "requests"
        if not d.exists():
            subprocess.run(["bash", str(SHARED / "corpus" / "unpack.sh"), "requests", str(d)],
                           check=True, capture_output=True)
        return "requests (20 releases)", d
    return Path(spec).name, Path(spec)


def build(name: str, src: Path, work: Path) -> Path:
    img = work / (name.replace(" ", "_").replace("/", "_") + ".img")
    if not img.exists():
        from docteur_core.make import make_image
        t = time.perf_counter()
        make_image(src, img)
        print(f"  built {img.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return img


def git_repo_of(img: Path, work: Path) -> Path:
    """A bare repository whose only pack is the image's PACK and IDX."""
    data = img.read_bytes()
    idx_offset = int.from_bytes(data[20:28], "little")
    head = idxmod.parse_head(data[idx_offset:idx_offset + idxmod.HEAD_SIZE], idx_offset)
    n = head.count
    large = sum(1 for i in range(n) if int.from_bytes(
        data[head.offset_at(i):head.offset_at(i) + 4], "big") & idxmod.LARGE_OFFSET_FLAG)
    idx = data[idx_offset:idx_offset + head.size(large)]
    pack_sum = idx[-40:-20]
    end = data.rfind(pack_sum, 0, idx_offset) + 20
    pack = data[28:end]
    repo = work / (img.stem + ".git")
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    name = pack_sum.hex()
    (repo / "objects" / "pack" / f"pack-{name}.pack").write_bytes(pack)
    (repo / "objects" / "pack" / f"pack-{name}.idx").write_bytes(idx)
    return repo


def timed(fn, repeat: int) -> tuple[float, object]:
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def git_cat_all(repo: Path, ids: list[str]) -> int:
    proc = subprocess.Popen(["git", "--git-dir", str(repo), "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate("".join(i + "\n" for i in ids).encode())
    if proc.returncode:
        raise RuntimeError("git cat-file failed")
    return len(out)


CHILD = r"""
import sys, time
def hwm():  # peak resident memory of this process (ru_maxrss carries the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
sys.path.insert(0, sys.argv[1])
from docteur_core.reader import Image
import docteur_core.blockdev.device, docteur_core.reader.pathindex  # imports: not the open's
before = hwm()
t = time.perf_counter()
image = Image.open(sys.argv[2], sys.argv[3], path_index=sys.argv[4] == "1")
took = time.perf_counter() - t
image.get(sys.argv[5])
after = hwm()
print(took, (after - before) * 1024)
"""


def open_in_child(img: Path, mode: str, index: bool, path: str) -> tuple[float, int]:
    """(open seconds, peak memory growth in bytes) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(HERE.parent), str(img), mode,
                          "1" if index else "0", path], check=True, capture_output=True,
                         text=True).stdout.split()
    return float(out[0]), int(out[1])


class CountingDevice:
    """Counts the requests that reach the device (below the sector cache)."""

    def __init__(self, device) -> None:
        self.device, self.reads = device, 0
        self.block_size, self.capacity = device.block_size, device.capacity

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.device.read(offset, length)

    def close(self) -> None:
        self.device.close()


def cold_lookups(img: Path, mode: str, index: bool, paths: list[str],
                 verify: bool = True) -> tuple[float, int]:
    """Mean and max device reads of one lookup on a freshly opened image
    (verified: the trees on the path read and hashed too)."""
    from docteur_core.blockdev.block import FileDevice

    counts = []
    for p in paths:
        dev = CountingDevice(FileDevice(str(img)))
        image = Image.open(dev, mode, path_index=index, verify=verify)
        before = dev.reads
        image.exists(p)
        counts.append(dev.reads - before)
        dev.close()
    return statistics.mean(counts), max(counts)


def bench(spec: str, work: Path, repeat: int) -> list[str]:
    import random

    name, src = corpus_dir(spec, work)
    img = build(name, src, work)
    repo = git_repo_of(img, work)
    with open(img, "rb") as f:
        commit = f.read(20).hex()
    print(f"\n== {name}: {img.stat().st_size:,} byte image", flush=True)
    with Image.open(img, "fast") as image:
        files = list(image.files())
        objects = image.store.object_count
        sup = image.path_index.sup
    print(f"  {len(files):,} files, {objects:,} objects; path index: {sup.records:,} trees "
          f"in {sup.pages:,} pages")
    deepest = max(files, key=lambda n: (n.path.count("/"), n.path)).path
    rows = []

    t_ls, _ = timed(lambda: subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r",
                                            commit], check=True, capture_output=True), repeat)
    print(f"  git ls-tree -r: {t_ls * 1000:.1f} ms")
    sample = [n.path for n in random.Random(1).sample(files, min(200, len(files)))]
    for mode in ("fast", "light"):
        for index in (True, False):
            opens = [open_in_child(img, mode, index, deepest) for _ in range(repeat)]
            t = statistics.median(o[0] for o in opens)
            mem = statistics.median(o[1] for o in opens)
            mean, top = cold_lookups(img, mode, index, sample[:50 if index else 20])
            umean, utop = cold_lookups(img, mode, index, sample[:50 if index else 20], False)
            label = f"{mode}{'' if index else ' (no index)'}"
            line = (f"  open {label}: {t * 1000:.2f} ms ({t / t_ls:.3f}x ls-tree), peak memory "
                    f"+{mem / 2**20:.1f} MiB; cold lookup: {mean:.1f} device reads "
                    f"(max {top}) verified, {umean:.1f} (max {utop}) with --no-verify")
            print(line, flush=True)
            rows.append((name, label, t * 1000, mem / 2**20, mean, top))

    ids = [n.id for n in files]
    t_git, git_bytes = timed(lambda: git_cat_all(repo, ids), repeat)

    def git_all_objects():
        return len(subprocess.run(["git", "--git-dir", str(repo), "cat-file",
                                   "--batch-all-objects", "--batch"], check=True,
                                  capture_output=True).stdout)

    t_all, _ = timed(git_all_objects, repeat)
    print(f"  git cat-file --batch (every file): {t_git * 1000:.1f} ms; "
          f"--batch-all-objects --batch: {t_all * 1000:.1f} ms")

    def read_all(mode, index, verify):
        def run():
            with Image.open(img, mode, path_index=index, verify=verify) as image:
                size = 0
                for node in image.files():
                    size += len(image.get(node))
                return size
        return run

    reads = []
    for mode in ("fast", "light"):
        for index in (True, False):
            # Verified (the default) and --no-verify, runs interleaved so that
            # the machine's load weighs on both alike.
            runs: dict[bool, list[float]] = {True: [], False: []}
            total = 0
            for _ in range(repeat):
                for verify in (False, True):
                    t = time.perf_counter()
                    total = read_all(mode, index, verify)()
                    runs[verify].append(time.perf_counter() - t)
            t_plain, t = statistics.median(runs[False]), statistics.median(runs[True])
            label = f"{mode}{'' if index else ' (no index)'}"
            print(f"  read every file ({label}, open+walk+read): verified {t * 1000:.1f} ms "
                  f"({total:,} bytes) = {t / t_plain:.3f}x --no-verify's {t_plain * 1000:.1f} "
                  f"ms, {t / t_git:.2f}x cat-file --batch, {t / t_all:.2f}x "
                  "--batch-all-objects", flush=True)
            reads.append((label, t))
            reads.append((label + ", --no-verify", t_plain))
    table = [f"| {name} | {label} | {t:.2f} ms | +{m:.1f} MiB | {mean:.1f} (max {top}) |"
             for name, label, t, m, mean, top in rows]
    table.append(f"| {name} | git ls-tree -r | {t_ls * 1000:.1f} ms | | |")
    for label, t in reads:
        table.append(f"| {name} | read all, {label} | {t * 1000:.0f} ms = "
                     f"{t / t_all:.2f}x batch-all-objects, {t / t_git:.2f}x --batch | | |")
    table.append(f"| {name} | git cat-file --batch-all-objects --batch | "
                 f"{t_all * 1000:.0f} ms | | |")
    return table


def synthetic(n: int) -> list[str]:
    """A path index of n generated paths, without building the image around it
    (bench/pathindex.py): its size and the reads of cold lookups."""
    from pathindex import synthetic as encode_synthetic

    line = encode_synthetic(n)
    print("\n  " + line, flush=True)
    return [f"| {line} | | | | |"]


def big_text(size: int, seed: int) -> list[bytes]:
    """Lines of generated text, about `size` bytes (a log, a data dump)."""
    import random

    rnd = random.Random(seed)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randrange(2, 10)))
             for _ in range(5000)]
    lines, total, i = [], 0, 0
    while total < size:
        line = (f"{i:08d} " + " ".join(rnd.choice(words) for _ in range(10)) + "\n").encode()
        lines.append(line)
        total += len(line)
        i += 1
    return lines


def big_delta(mib: int, work: Path, repeat: int) -> list[str]:
    """One file of `mib` MiB changed a little: two versions of it in one tree,
    so git stores one of them as a delta on the other; `docteur cat` of the
    delta one against `git cat-file blob`, time and peak memory, same run."""
    import random

    src = work / f"bigdelta{mib}"
    if not src.exists():
        tmp = work / f"bigdelta{mib}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lines = big_text(mib << 20, mib)
        (tmp / "v1.txt").write_bytes(b"".join(lines))
        rnd = random.Random(mib + 1)
        for _ in range(20):  # 20 lines changed here and there
            j = rnd.randrange(len(lines))
            lines[j] = b"changed " + lines[j]
        (tmp / "v2.txt").write_bytes(b"".join(lines))
        tmp.rename(src)
    img = build(f"bigdelta{mib}", src, work)
    repo = git_repo_of(img, work)
    verify = subprocess.run(["git", "--git-dir", str(repo), "verify-pack", "-v",
                             *map(str, (repo / "objects" / "pack").glob("*.idx"))],
                            check=True, capture_output=True, text=True).stdout
    # The blob stored as a delta: a verify-pack line with a depth and a base.
    line = next(l for l in verify.splitlines() if " blob " in l and len(l.split()) == 7)
    oid = line.split()[0]
    with Image.open(img, "light") as image:
        path = next(n.path for n in image.files() if n.id == oid)
    print(f"\n== one {mib} MiB file stored as a delta ({path}, {oid[:12]}): "
          f"{img.stat().st_size:,} byte image", flush=True)
    git = best(["git", "--git-dir", str(repo), "cat-file", "blob", oid], repeat)
    cat = best(DOCTEUR + ["cat", str(img), path], repeat)
    want = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "blob", oid],
                          check=True, capture_output=True).stdout
    got = subprocess.run(DOCTEUR + ["cat", str(img), path], check=True,
                         capture_output=True).stdout
    assert got == want, "docteur cat and git cat-file disagree"
    # The interpreter's start and imports, apart: what `docteur ls` of the
    # image costs (open included) is what the cat costs beyond reading.
    start = best(DOCTEUR + ["ls", str(img)], repeat)

    def in_process():
        with Image.open(img, "light") as image:
            return image.stream(path, lambda piece: None)

    t_in, _ = timed(in_process, repeat)
    print(f"  git cat-file blob: {git}")
    print(f"  docteur cat:       {cat} = {cat.ratio(git)}")
    print(f"  docteur ls (start-up and open alone): {start}; the read itself, in process: "
          f"{t_in:.3f} s")
    return [f"| {mib} MiB file stored as a delta | docteur cat {cat.wall:.2f} s "
            f"({cat.cpu:.2f} s CPU), {cat.rss_mib:.0f} MiB; in process {t_in:.2f} s | "
            f"git cat-file blob {git.wall:.2f} s ({git.cpu:.2f} s CPU), {git.rss_mib:.0f} MiB "
            f"| {cat.ratio(git)} |"]


READ_ALL = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from docteur_core.reader import Image
t = time.perf_counter()
with Image.open(sys.argv[1], sys.argv[2]) as image:
    total = files = 0
    for node in image.files():
        total += image.stream(node.path, lambda piece: None) if sys.argv[3] == "stream"             else len(image.get(node.path))
        files += 1
    inflated = image.store.objects_inflated
print(files, total, inflated, time.perf_counter() - t)
"""


def read_all(img: Path, repeat: int) -> list[str]:
    """Read every file of an existing image (fast mode) in a fresh process,
    against `git cat-file --batch-all-objects --batch` on its pack, same run."""
    work = Path(tempfile.mkdtemp(prefix="read-all-"))
    try:
        repo = git_repo_of(img, work)
        print(f"\n== read every file of {img} ({img.stat().st_size:,} bytes)", flush=True)
        git = best(["git", "--git-dir", str(repo), "cat-file", "--batch-all-objects",
                    "--batch"], repeat)
        print(f"  git cat-file --batch-all-objects --batch: {git}", flush=True)
        rows = []
        for how in ("get", "stream"):
            run = best([sys.executable, "-c", READ_ALL, str(img), "fast", how,
                        str(HERE.parent)], repeat, keep_output=True)
            files, total, inflated, _ = run.out.split()
            print(f"  docteur, fast mode, Image.{how} of each of {int(files):,} files "
                  f"({int(total):,} bytes, {int(inflated):,} entries inflated): {run} = "
                  f"{run.ratio(git)}", flush=True)
            rows.append(f"| read every file of {img.name} (fast, {how}) | {run} | "
                        f"git --batch-all-objects {git} | {run.ratio(git)} |")
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", action="append",
                   help="requests, gen:N, or a directory (repeatable)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "docteur-bench-read"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--synthetic", type=int, action="append", default=[],
                   help="also encode a path index of N generated paths alone and count "
                        "the reads of cold lookups (repeatable; e.g. 1000000)")
    p.add_argument("--big-delta", type=int, action="append", metavar="MIB",
                   help="the single large delta file case, a file of MIB MiB (default: 24; "
                        "0 to skip)")
    p.add_argument("--read-all", action="append", default=[], metavar="IMAGE",
                   help="read every file of an existing image (e.g. a Linux tree's) in a "
                        "fresh process, against git cat-file --batch-all-objects (repeatable)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {load()}", flush=True)
    table = ["| corpus | what | time | memory | cold lookup, device reads |",
             "|---|---|---|---|---|"]
    only = args.synthetic or args.read_all or args.big_delta
    for spec in args.corpus or ([] if only else ["requests", "gen:10000", "gen:100000"]):
        try:
            table += bench(spec, work, args.repeat)
        except FileNotFoundError as exc:
            print(f"\n== {spec}: {exc}", flush=True)
    for n in args.synthetic:
        table += synthetic(n)
    versus = ["| case | docteur | git | ratio |", "|---|---|---|---|"]
    for mib in args.big_delta or ([] if args.corpus or args.synthetic or args.read_all
                                  else [24]):
        if mib:
            versus += big_delta(mib, work, args.repeat)
    for img in args.read_all:
        versus += read_all(Path(img), args.repeat)
    print("\n" + "\n".join(table))
    if len(versus) > 2:
        print("\n" + "\n".join(versus))
    print(f"machine after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
