"""Serving speed: the docteur plugin against nbdkit's own file plugin.

    python3 bench/serve.py [--size-mib 1024] [--work DIR] [--rounds 3] [--seconds 10]
                           [--variant default --variant thread_model=parallel]

Both servers serve the same image in one run, alternating within each round
(ratios are the median of per-round ratios), with the image in the page cache (it is read once before measuring): a sequential
read of the whole export (`nbdcopy URI null:`) and random 4 KiB reads
(`fio --ioengine=nbd --rw=randread --bs=4k --iodepth=16`). Prints MiB/s,
IOPS and the plugin/file ratios (goal: >= 0.8 sequential, >= 0.5 random).

The image holds random (incompressible) files so that its size is what is
served; it is built with git alone, with compression off and no delta
search to keep the build quick, and kept in --work for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docteur_core.format import layout  # noqa: E402
from tests.support import PLUGIN, NbdkitServer, git  # noqa: E402

FILE_MIB = 16


def build_image(image: Path, size_mib: int) -> None:
    """A valid docteur image of `size_mib` MiB of random files (git only)."""
    with tempfile.TemporaryDirectory(prefix="bench-serve-", dir=image.parent) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i in range(max(1, size_mib // FILE_MIB)):
            (src / f"random-{i:04d}.bin").write_bytes(os.urandom(FILE_MIB << 20))
        gitdir = Path(tmp) / "repo.git"
        git("init", "-q", "--bare", str(gitdir))
        env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(src),
               "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        fast = ("-c", "core.compression=0", "-c", "pack.compression=0",
                "-c", "core.bigFileThreshold=1g")
        git(*fast, "add", "-A", ".", cwd=src, env=env)
        tree = git("write-tree", cwd=src, env=env).decode().strip()
        commit = git("commit-tree", tree, "-m", "bench", env=env).decode().strip()
        objects = git("rev-list", "--objects", "--no-object-names", "--no-walk", commit, env=env)
        git(*fast, "pack-objects", "-q", "--window=0", str(Path(tmp) / "pack"),
            input=objects, env=env)
        pack = next(Path(tmp).glob("pack-*.pack"))
        idx = next(Path(tmp).glob("pack-*.idx")).read_bytes()
        pack_size = pack.stat().st_size
        idx_offset, size = layout.image_layout(pack_size, len(idx), 4096)
        part = image.with_suffix(".part")
        with open(part, "wb") as out, open(pack, "rb") as inp:
            out.write(layout.encode_header(bytes.fromhex(commit), idx_offset))
            while chunk := inp.read(1 << 22):
                out.write(chunk)
            out.seek(idx_offset)
            out.write(idx)
            out.truncate(size)
        part.rename(image)


def warm(image: Path) -> None:
    with open(image, "rb") as f:
        while f.read(1 << 24):
            pass


def sequential(uri: str) -> float:
    start = time.perf_counter()
    subprocess.run(["nbdcopy", uri, "null:"], check=True)
    return time.perf_counter() - start


def random_iops(uri: str, seconds: int) -> float:
    out = subprocess.run(
        ["fio", "--name=randread", "--ioengine=nbd", f"--uri={uri}", "--rw=randread",
         "--bs=4k", "--iodepth=16", f"--runtime={seconds}", "--time_based",
         "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]


def measure(servers: dict[str, NbdkitServer], size: int, rounds: int, seconds: int) -> dict:
    """Alternate the servers within each round, so that load from other
    processes on the machine hits them alike; ratios are taken per round."""
    seq: dict[str, list[float]] = {name: [] for name in servers}
    rnd: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            seq[name].append(size / (1 << 20) / sequential(server.uri))
        for name, server in servers.items():
            rnd[name].append(random_iops(server.uri, seconds))
    for name in servers:
        print(f"{name:28s} sequential {statistics.median(seq[name]):6.0f} MiB/s "
              f"({', '.join(f'{v:.0f}' for v in seq[name])})   random 4k "
              f"{statistics.median(rnd[name]):6.0f} IOPS ({', '.join(f'{v:.0f}' for v in rnd[name])})")
    return {"seq": seq, "rand": rnd}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "docteur-bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="length of each fio run")
    ap.add_argument("--variant", action="append",
                    help="plugin keys to compare, comma-separated (e.g. thread_model=parallel); "
                    "repeatable; 'default' is the plugin without extra keys")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    image = args.work / f"random-{args.size_mib}m.img"
    if not image.exists():
        t = time.perf_counter()
        build_image(image, args.size_mib)
        print(f"built {image} in {time.perf_counter() - t:.1f}s", flush=True)
    size = image.stat().st_size
    warm(image)
    print(f"image {image}: {size / (1 << 20):.0f} MiB, {os.cpu_count()} CPUs", flush=True)
    servers = {"file": NbdkitServer("file", f"file={image}", unix=True)}
    variants = args.variant or ["default"]
    for v in variants:
        keys = [] if v == "default" else v.split(",")
        servers[f"docteur {v}"] = NbdkitServer(PLUGIN, f"image={image}", *keys, unix=True)
    for server in servers.values():
        server.start()
    try:
        r = measure(servers, size, args.rounds, args.seconds)
    finally:
        for server in servers.values():
            server.stop()
    for name in servers:
        if name == "file":
            continue
        seq = statistics.median(p / f for p, f in zip(r["seq"][name], r["seq"]["file"]))
        rnd = statistics.median(p / f for p, f in zip(r["rand"][name], r["rand"]["file"]))
        print(f"ratio {name}/file: sequential {seq:.2f}x (goal 0.8x), "
              f"random 4k {rnd:.2f}x (goal 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
