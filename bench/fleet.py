"""A fleet: one HTTP origin, N hosts serving its image lazily, M clients each.

    python3 bench/fleet.py [--corpus DIR] [--hosts 3] [--clients 2] [--files 150]
                           [--rounds 3] [--no-guest] [--work DIR] [--cache-size SIZE]

- The origin: a real nginx (tests/helpers/nginx.py) serving a folder where the image
  is published under the name of its commit (COMMIT.img), with an access
  log (status, bytes sent, request, Range, User-Agent per request).
- N hosts: each its own `docteur serve URL` (nbdkit's curl plugin and cache
  filter, its own --cache-dir) on its own loopback port. Each host asks for
  URL?host=I: nginx ignores the query, the access log tells hosts apart.
- M clients per host: processes reading files through the NBD export with
  the block reader (`Image.open("nbd://...", "light")`), and one QEMU guest
  (`docteur boot nbd://HOST cat FILE`) on a host of its own, cold.

Reported:
- cold host, time to the first file (`docteur cat --mode light`, from the
  start of `docteur serve` to the file's bytes) and the origin bytes it took,
  as a share of the image (goal: <= 1%); the same for the guest's host;
- per host: bytes the origin sent, requests, bytes sent more than once
  (overlapping ranges; goal: each byte at most once per host), against the
  bytes its clients read; `origin_nbdkit_only` leaves out the check's
  requests (`docteur serve` reads ~30 KiB itself before nbdkit starts, and
  nbdkit fetches them again);
- warm reads: the same client workload again (the hosts' caches filled)
  against a host serving the image as a local file (`docteur serve IMAGE`:
  the docteur plugin behind the cache filter), in MB/s of file bytes, and a
  sequential `nbdcopy` of the export; the median of --rounds rounds that
  alternate the two (goal: remote >= 0.8x local).

The corpus defaults to the Django-sized one (the last 10 Django releases,
../shared/corpus/fetch-sdists.sh django 10 DIR, kept in
~/.cache/docteur-corpus/django); the image is built once into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.nginx import Nginx  # noqa: E402

DOCTEUR = [sys.executable, "-m", "docteur_core"]
CORPUS = Path.home() / ".cache" / "docteur-corpus" / "django"

CLIENT = r"""
import json, sys, time
from docteur_core.reader.image import Image
uri, paths = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
n = 0
with Image.open(uri, "light") as image:
    for p in paths:
        n += len(image.get(p))
print(json.dumps({"bytes": n, "seconds": time.perf_counter() - t}))
"""


def log(message: str) -> None:
    print(f"fleet: {message}", file=sys.stderr, flush=True)


def corpus(path: Path) -> Path:
    if path.is_dir() and any(path.iterdir()):
        return path
    log(f"fetching the Django corpus into {path} (about 15 s a release)")
    subprocess.run(["bash", str(ROOT.parent / "shared" / "corpus" / "fetch-sdists.sh"),
                    "django", "10", str(path)], check=True)
    return path


def build(source: Path, work: Path) -> tuple[Path, str]:
    image = work / "image.img"
    if not image.exists():
        log(f"building the image of {source}")
        subprocess.run([*DOCTEUR, "make", str(source), str(image)], check=True,
                       capture_output=True)
    info = json.loads(subprocess.run([*DOCTEUR, "info", "--json", str(image)], check=True,
                                     capture_output=True).stdout)
    return image, info["commit"]


def file_list(image: Path) -> list[tuple[str, int]]:
    listing = json.loads(subprocess.run([*DOCTEUR, "ls", "-r", "--json", "-l", str(image), "/"],
                                        check=True, capture_output=True).stdout)
    return [("/" + e["path"].lstrip("/"), e.get("size") or 0) for e in listing["entries"]
            if e.get("type") == "blob"]


class Host:
    """`docteur serve -f URL` on a port of its own, with its own cache dir."""

    def __init__(self, target: str, work: Path, name: str, cache_size: str) -> None:
        from docteur_core.children import free_port

        self.name = name
        self.port = free_port()
        self.uri = f"nbd://127.0.0.1:{self.port}/"
        cache = work / f"cache-{name}"
        cache.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [*DOCTEUR, "serve", "-f", "--port", str(self.port), "--cache-dir", str(cache),
             "--cache-size", cache_size, target],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        line = self.proc.stdout.readline().decode().strip()
        if line != self.uri:
            raise SystemExit(f"{name}: serve said {line!r}: "
                             f"{self.stop()}")
        self.ready = time.perf_counter()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.communicate(timeout=60)[1].decode()
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            return self.proc.communicate()[1].decode()


def origin_use(nginx: Nginx, tag: str, agent: str | None = None) -> dict:
    """What the origin sent for requests whose line contains `tag`: bytes,
    requests, and bytes sent more than once (overlapping ranges)."""
    sent = requests = 0
    spans = []
    for status, n, request, rng, ua in nginx.log_records():
        if tag not in request or (agent is not None and not ua.startswith(agent)):
            continue
        requests += 1
        sent += n
        if status == 206 and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            spans.append((int(a), int(a) + n))
    spans.sort()
    union = 0
    end = -1
    for a, b in spans:
        if b > end:
            union += b - max(a, end)
            end = b
    return {"bytes": sent, "requests": requests, "unique": union,
            "repeated": sum(b - a for a, b in spans) - union}


def clients(uri: str, jobs: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, uri, *paths],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
             for paths in jobs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode:
            raise SystemExit(f"client failed: {stderr.decode()[-500:]}")
        out.append(json.loads(stdout))
    return out


def rate(results: list[dict]) -> float:
    """MB/s of file bytes over the clients run side by side."""
    return sum(r["bytes"] for r in results) / max(r["seconds"] for r in results) / 1e6


def nbdcopy_rate(uri: str, size: int) -> float:
    t = time.perf_counter()
    subprocess.run(["nbdcopy", uri, "null:"], check=True, timeout=900)
    return size / (time.perf_counter() - t) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/docteur-fleet"))
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--files", type=int, default=150, help="files each client reads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-size", default="auto")
    parser.add_argument("--no-guest", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    image, commit = build(corpus(args.corpus), args.work)
    size = image.stat().st_size
    files = file_list(image)
    log(f"image {size} bytes, {len(files)} files, commit {commit}")
    www = args.work / "www"
    www.mkdir(exist_ok=True)
    published = www / f"{commit}.img"
    if not published.exists():
        os.link(image, published) if image.stat().st_dev == www.stat().st_dev else \
            shutil.copyfile(image, published)
    for old in args.work.glob("cache-*"):
        shutil.rmtree(old)
    rng = random.Random(11)
    first_file = min((p for p, n in files if p.endswith("/README.rst")), default=files[0][0])
    report: dict = {"image_bytes": size, "files": len(files), "hosts": args.hosts,
                    "clients_per_host": args.clients, "files_per_client": args.files}
    hosts: list[Host] = []
    with Nginx(www) as nginx:
        url = f"{nginx.url}/{commit}.img"
        try:
            # 1. a cold host: serve, then the first file
            log("cold host: serve, then docteur cat of one file")
            t0 = time.perf_counter()
            h0 = Host(f"{url}?host=0", args.work, "0", args.cache_size)
            hosts.append(h0)
            got = subprocess.run([*DOCTEUR, "cat", "--mode", "light", h0.uri, first_file],
                                 capture_output=True, check=True)
            t1 = time.perf_counter()
            use = origin_use(nginx, "?host=0")
            check = origin_use(nginx, "?host=0", agent="docteur-reader")
            report["cold_first_file"] = {
                "path": first_file, "file_bytes": len(got.stdout), "seconds": t1 - t0,
                "serve_ready_seconds": h0.ready - t0, "origin_bytes": use["bytes"],
                "origin_requests": use["requests"], "check_bytes": check["bytes"],
                "share_of_image": use["bytes"] / size}
            log(f"  {report['cold_first_file']}")

            # 2. a cold guest on a host of its own
            if not args.no_guest:
                log("cold guest: a QEMU guest on a fresh host reads one file")
                hg = Host(f"{url}?host=guest", args.work, "guest", args.cache_size)
                hosts.append(hg)
                t0 = time.perf_counter()
                boot = subprocess.run([*DOCTEUR, "boot", hg.uri, "cat", first_file],
                                      capture_output=True, timeout=900)
                use = origin_use(nginx, "?host=guest")
                report["cold_guest"] = {
                    "ok": boot.returncode == 0 and boot.stdout == got.stdout,
                    "seconds_with_boot": time.perf_counter() - t0,
                    "origin_bytes": use["bytes"], "origin_requests": use["requests"],
                    "share_of_image": use["bytes"] / size}
                log(f"  {report['cold_guest']}")

            # 3. N hosts x M clients, cold then warm
            for i in range(1, args.hosts):
                hosts.append(Host(f"{url}?host={i}", args.work, str(i), args.cache_size))
            fleet = [h for h in hosts if h.name != "guest"]
            jobs = {h.name: [[p for p, _n in rng.sample(files, min(args.files, len(files)))]
                             for _ in range(args.clients)] for h in fleet}
            log(f"{len(fleet)} hosts x {args.clients} clients x {args.files} files, cold")
            cold = {h.name: clients(h.uri, jobs[h.name]) for h in fleet}
            per_host = {}
            for h in fleet:
                read = sum(r["bytes"] for r in cold[h.name])
                use = origin_use(nginx, f"?host={h.name}")
                served = origin_use(nginx, f"?host={h.name}", agent="docteur-serve")
                per_host[h.name] = {"client_file_bytes": read, "origin": use,
                                    "origin_nbdkit_only": served,
                                    "cold_MBps": rate(cold[h.name])}
            report["hosts_cold"] = per_host
            for name, row in per_host.items():
                log(f"  host {name}: {row}")

            # 4. warm reads against a host with the image as a local file
            log("warm: the same reads again, against `docteur serve IMAGE` (local file)")
            local = Host(str(image), args.work, "local", args.cache_size)
            hosts.append(local)
            h = fleet[-1]
            clients(local.uri, jobs[h.name])  # fill the local host's cache too
            nbdcopy_rate(local.uri, size)
            nbdcopy_rate(h.uri, size)  # the remote host now holds every block
            rows = []
            for _round in range(args.rounds):
                remote = rate(clients(h.uri, jobs[h.name]))
                here = rate(clients(local.uri, jobs[h.name]))
                seq_remote = nbdcopy_rate(h.uri, size)
                seq_local = nbdcopy_rate(local.uri, size)
                rows.append((remote, here, seq_remote, seq_local))
                log(f"  round: reader {remote:.1f} vs {here:.1f} MB/s, "
                    f"nbdcopy {seq_remote:.0f} vs {seq_local:.0f} MB/s")
            report["warm"] = {
                "reader_MBps_remote": statistics.median(r[0] for r in rows),
                "reader_MBps_local": statistics.median(r[1] for r in rows),
                "reader_ratio": statistics.median(r[0] / r[1] for r in rows),
                "nbdcopy_MBps_remote": statistics.median(r[2] for r in rows),
                "nbdcopy_MBps_local": statistics.median(r[3] for r in rows),
                "nbdcopy_ratio": statistics.median(r[2] / r[3] for r in rows)}
            report["warm"]["host_origin_after_all"] = origin_use(nginx, f"?host={h.name}")
            report["warm"]["host_origin_after_all_nbdkit_only"] = origin_use(
                nginx, f"?host={h.name}", agent="docteur-serve")
            total = origin_use(nginx, "")
            report["origin_total"] = {"bytes": total["bytes"], "requests": total["requests"],
                                      "image_bytes_x_hosts": size * len(hosts[:-1])}
        finally:
            for host in hosts:
                host.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
