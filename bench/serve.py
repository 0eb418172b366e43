"""Serving speed: `docteur serve` against nbdkit's own file plugin.

    python3 bench/serve.py [--size 1G] [--quick] [--work DIR] [--rounds 3]
                           [--seconds 10] [--cache-size 256M]
                           [--variant thread_model=parallel ...]

Three servers of the same image, in one run, side by side:

    file           nbdkit's file plugin: the reference, all C
    docteur        the docteur plugin alone (`docteur serve --no-cache`):
                   every read enters Python
    plugin + cache filter
                   the plugin behind nbdkit's cache filter, as `docteur
                   serve IMAGE` ran it until it served rebuilt images (now
                   `docteur boot`'s and a URL's way): repeated reads are
                   served by the filter, in C
    docteur serve  `docteur serve --foreground IMAGE` itself: docteur
                   listens and hands each client to an nbdkit of its own,
                   the file plugin on the image's descriptor (serve/front.py)

Each is measured with the image in the page cache (it is read once first):
a sequential read of the whole export (`nbdcopy URI null:`) and random 4 KiB
reads (`fio --ioengine=nbd --rw=randread --bs=4k --iodepth=16`). The
servers alternate within each round so that load from other processes hits
them alike; ratios against the file plugin are the median of per-round
ratios (goal for the plugin alone: >= 0.8 sequential, >= 0.5 random).

The cache filter starts empty: its first sequential round fills it (it
writes every block read to its file in $TMPDIR), later rounds and the random
reads hit it as long as the image fits in --cache-size; a bigger image is
read through it with blocks evicted (least recently used first), which is
what a user serving such an image gets.

--quick: one round of 3-second fio runs on a 256 MiB image (unless --size
says otherwise), to check the bench works. The image holds random
(incompressible) files so that its size is what is served; it is built with
git alone, compression off, and kept in --work for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docteur_core.format import layout  # noqa: E402
from docteur_core.serve.nbdkit import DEFAULT_CACHE_SIZE, Listen, Server, command  # noqa: E402
from tests.helpers.support import git  # noqa: E402

FILE_MIB = 16
GOALS = {"seq": 0.8, "rand": 0.5}


def parse_size(text: str) -> int:
    """MiB from "256", "256M", "1G", "1.5G"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MmGg]?)(?:i?B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 256M or 1G")
    value = float(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1M")
    return int(value)


def build_image(image: Path, size_mib: int) -> None:
    """A valid docteur image of about `size_mib` MiB of random files (git only)."""
    with tempfile.TemporaryDirectory(prefix="bench-serve-", dir=image.parent) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        left, i = size_mib, 0
        while left > 0:
            part = min(FILE_MIB, left)
            (src / f"random-{i:04d}.bin").write_bytes(os.urandom(part << 20))
            left, i = left - part, i + 1
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
    proc = subprocess.run(
        ["fio", "--name=randread", "--ioengine=nbd", f"--uri={uri}", "--rw=randread",
         "--bs=4k", "--iodepth=16", f"--runtime={seconds}", "--time_based",
         "--output-format=json"],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fio failed (does it have the nbd engine? `fio --enghelp`): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    out = proc.stdout
    return json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]


class Front:
    """`docteur serve --foreground --unix SOCKET IMAGE`, exactly as users run
    it: docteur listens and runs one nbdkit (file plugin) per client."""

    def __init__(self, image: Path, sock: Path) -> None:
        self.uri = f"nbd+unix:///?socket={sock}"
        self.argv = [sys.executable, "-m", "docteur_core", "serve", "--foreground",
                     "--unix", str(sock), str(image)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Front":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if line.strip() != self.uri:
            self.stop()
            raise SystemExit(f"docteur serve did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def servers_for(image: Path, tmp: Path, cache_size: str, variants: list[str]) -> dict:
    """name -> Server (not started), each on its own Unix socket."""

    def make(slug: str, **kw) -> Server:
        extra = kw.pop("extra", [])

        def argv(listen: Listen, pidfile) -> list[str]:
            return command(image, listen, pidfile=pidfile, exit_with_parent=True, **kw) + extra

        return Server(argv, Listen(unix=tmp / f"{slug}.sock"))

    servers = {
        "file": make("file", server="file", cache_size=None),
        "docteur (--no-cache)": make("docteur", cache_size=None),
        "plugin + cache filter": make("serve", cache_size=cache_size),
        "docteur serve": Front(image, tmp / "front.sock"),
    }
    for i, keys in enumerate(variants):
        servers[f"docteur {keys} (--no-cache)"] = make(
            f"variant{i}", cache_size=None, extra=keys.split(","))
    return servers


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(servers: dict[str, Server], size: int, rounds: int, seconds: int) -> dict:
    """Alternate the servers within each round; keep every value."""
    seq: dict[str, list[float]] = {name: [] for name in servers}
    rnd: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(rounds):
        for name, server in servers.items():
            seq[name].append(size / (1 << 20) / sequential(server.uri))
        for name, server in servers.items():
            rnd[name].append(random_iops(server.uri, seconds))
        print(f"round {r + 1}/{rounds} done (load {load()})", file=sys.stderr, flush=True)
    return {"seq": seq, "rand": rnd}


def report(servers: dict[str, Server], r: dict) -> None:
    width = max(len(name) for name in servers)
    print()
    print(f"{'server':{width}s}  {'sequential MiB/s':>16s}  {'x file':>6s}  "
          f"{'random 4k IOPS':>14s}  {'x file':>6s}   (per round: seq | random)")
    for name in servers:
        ratios = {}
        for kind in ("seq", "rand"):
            ratios[kind] = statistics.median(
                v / f for v, f in zip(r[kind][name], r[kind]["file"]))
        print(f"{name:{width}s}  {statistics.median(r['seq'][name]):16.0f}  "
              f"{ratios['seq']:5.2f}x  {statistics.median(r['rand'][name]):14.0f}  "
              f"{ratios['rand']:5.2f}x   "
              f"({', '.join(f'{v:.0f}' for v in r['seq'][name])} | "
              f"{', '.join(f'{v:.0f}' for v in r['rand'][name])})")
    print(f"goals for the plugin against the file plugin: sequential >= {GOALS['seq']}x, "
          f"random 4k >= {GOALS['rand']}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--size", type=parse_size, default=None,
                    help="image size, e.g. 256M, 1G (default 1G; 256M with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="one round, 3-second fio runs, 256M image: checks the bench works")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "docteur-bench")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--seconds", type=int, default=None,
                    help="length of each fio run (default 10; 3 with --quick)")
    ap.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE,
                    help=f"docteur serve's --cache-size (default {DEFAULT_CACHE_SIZE})")
    ap.add_argument("--variant", action="append", default=[],
                    help="also the plugin alone with these keys, comma-separated "
                         "(e.g. thread_model=parallel); repeatable")
    args = ap.parse_args()
    size_mib = args.size or (256 if args.quick else 1024)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3 if args.quick else 10)

    args.work.mkdir(parents=True, exist_ok=True)
    image = args.work / f"random-{size_mib}m.img"
    if not image.exists():
        t = time.perf_counter()
        build_image(image, size_mib)
        print(f"built {image} in {time.perf_counter() - t:.1f}s", flush=True)
    size = image.stat().st_size
    warm(image)
    print(f"image {image}: {size / (1 << 20):.0f} MiB; {os.cpu_count()} CPUs, load {load()}; "
          f"{rounds} round(s), fio {seconds}s; cache filter bound {args.cache_size}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        servers = servers_for(image, Path(tmp), args.cache_size, args.variant)
        try:
            for name, server in servers.items():
                server.start()
            print("commands:", flush=True)
            for name, server in servers.items():
                args = server.proc.args
                print(f"  {name}: {' '.join(map(str, args))}", flush=True)
            r = measure(servers, size, rounds, seconds)
        finally:
            for server in servers.values():
                server.stop()
    report(servers, r)
    print(f"load at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
