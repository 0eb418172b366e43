"""Reader benchmark: boot time per mode, deep-path lookups, read-everything vs git.

    python3 bench/read.py                       # requests corpus + a generated 100k-file tree
    python3 bench/read.py --corpus requests --corpus /tmp/corpus-django --corpus gen:10000

For each corpus an image is built with `make_image` (kept in --work), then,
in the same run:
- open (boot) time in fast and light modes (fast = IDX load + index build);
- lookup latency of the deepest file path (resolve only, and resolve+read),
  warm (repeated on one open image) in both modes;
- time to read every file, in both modes, against `git cat-file --batch`
  reading the same blobs from the same pack (the image's PACK and IDX,
  copied into a bare repository), and the ratio.
Numbers are medians of --repeat runs.
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

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


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
        d = work / "requests"
        if not d.exists():
            subprocess.run(["bash", str(SHARED / "corpus" / "unpack.sh"), "requests", str(d)],
                           check=True, capture_output=True)
        return "requests (20 releases)", d
    return Path(spec).name, Path(spec)


def build(name: str, src: Path, work: Path) -> Path:
    img = work / (name.replace(" ", "_").replace("/", "_") + ".img")
    if not img.exists():
        from docteur_core.build import make_image
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


def bench(spec: str, work: Path, repeat: int) -> None:
    name, src = corpus_dir(spec, work)
    img = build(name, src, work)
    repo = git_repo_of(img, work)
    print(f"\n== {name}: {img.stat().st_size:,} byte image", flush=True)
    with Image.open(img, "light") as image:
        files = list(image.files())
        objects = image.store.object_count
    deepest = max(files, key=lambda n: (n.path.count("/"), n.path)).path
    total = 0
    print(f"  {len(files):,} files, {objects:,} objects; deepest path: {deepest}")

    for mode in ("fast", "light"):
        t, _ = timed(lambda: Image.open(img, mode).close(), repeat)
        print(f"  open ({mode}): {t * 1000:.1f} ms")

    for mode in ("fast", "light"):
        with Image.open(img, mode) as image:
            image.get(deepest)
            n = 1000
            t = time.perf_counter()
            for _ in range(n):
                image.exists(deepest)
            resolve = (time.perf_counter() - t) / n
            t = time.perf_counter()
            for _ in range(n):
                image.get(deepest)
            get = (time.perf_counter() - t) / n
        print(f"  deep lookup ({mode}, warm): resolve {resolve * 1e6:.1f} us, "
              f"resolve+read {get * 1e6:.1f} us")
        # Cold: a fresh image each time (light: nothing cached at all).
        t, _ = timed(lambda: Image.open(img, mode).get(deepest), repeat)
        print(f"  deep lookup ({mode}, cold, open included): {t * 1000:.2f} ms")

    ids = [n.id.hex() for n in files]

    def read_all(mode):
        def run():
            with Image.open(img, mode) as image:
                size = 0
                for node in image.files():
                    size += len(image.get(node.path))
                return size
        return run

    def read_all_known(mode, image):
        def run():
            image.store.clear_cache()
            size = 0
            for node in files:
                size += len(image.get(node.path))
            return size
        return run

    t_git, git_bytes = timed(lambda: git_cat_all(repo, ids), repeat)
    print(f"  git cat-file --batch, every file: {t_git * 1000:.1f} ms ({git_bytes:,} bytes out)")
    # Each distinct blob once: decoding speed without the dedup our object
    # cache gives (git writes every copy through its pipe).
    unique = {}
    for node in files:
        unique.setdefault(node.id, node.path)
    t_git_u, _ = timed(lambda: git_cat_all(repo, [i.hex() for i in unique]), repeat)
    with Image.open(img, "fast") as image:
        def run_unique():
            image.store.clear_cache()
            return sum(len(image.get(p)) for p in unique.values())
        t_u, _ = timed(run_unique, repeat)
    print(f"  {len(unique):,} distinct blobs: git {t_git_u * 1000:.1f} ms, fast reads "
          f"{t_u * 1000:.1f} ms = {t_u / t_git_u:.2f}x git")
    for mode in ("fast", "light"):
        t, total = timed(read_all(mode), repeat)
        print(f"  read every file ({mode}, open+walk+read): {t * 1000:.1f} ms "
              f"({total:,} bytes) = {t / t_git:.2f}x git")
        with Image.open(img, mode) as image:
            t, _ = timed(read_all_known(mode, image), repeat)
        print(f"  read every file ({mode}, reads only, cold object cache): "
              f"{t * 1000:.1f} ms = {t / t_git:.2f}x git")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", action="append",
                   help="requests, gen:N, or a directory (repeatable)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "docteur-bench-read"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for spec in args.corpus or ["requests", "gen:10000", "gen:100000"]:
        bench(spec, work, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
