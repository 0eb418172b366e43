#!/usr/bin/env python3
"""The original docteur's headline, measured on a corpus of the same kind (issue 23 item 3).

The OCaml docteur was announced with "the documentation of several OPAM
packages with all their versions, 14 GB" made into a 280 MB image: 50x.
This benchmark builds the same kind of corpus from the package index this
machine uses (pip's configured index: PIP_INDEX_URL or `pip config`'s
global.index-url, else https://pypi.org/simple): every release of several
projects' source distributions (their docs and code), unpacked one folder
per release, CORPUS/PROJECT/VERSION/, releases in version order. The
default projects (pygments, werkzeug, flask, jinja2, requests, click,
docutils: 573 releases) unpack to 2.32 GB in 184,284 files; the corpus'
size is the sum of its files' sizes.

usage: .venv/bin/python bench/seed.py [--small] [--projects a,b,...] [--cache DIR]
           [--workdir DIR] [--jobs N] [--fetch-only] [--no-squashfs] [--no-base]
(the project's venv, made by `bash .ci/setup`: docteur make needs its dependencies)

In one run, on the same machine state:
- docteur: `docteur make --date 2026-01-01T00:00:00Z` of the whole corpus
  (a fresh process: start-up and imports count);
- squashfs: `mksquashfs -comp xz -b 1M` of the same folder (the usual
  read-only file-system image; `apt-get install squashfs-tools`);
- redeploy: the corpus without its last release (the newest release of
  the last project) built in full as OLD.img, then
  `docteur make --base OLD.img CORPUS NEW.img` with that release added,
  against the full build above (issue 23's goal for Django-10: <= 10 % of
  the full build's time, image within 1 % of its size).
Each command's wall time, CPU time (user + sys) and peak memory (the
sampled sum of the RSS of its whole process tree, and its largest process)
are printed, then ratio lines: the corpus over the image (the original's
50x) and the image over squashfs-xz (issue 23's goals: >= 50x, <= 1.0x).

Fetching is a one-time cost kept out of the measurement: the index's
simple API (PEP 691 JSON, else its HTML page) gives each release's sdist
(one per version: .tar.gz before .zip before .tar.bz2), fetched in
parallel and checked against the index's sha256 into CACHE/sdists/, then
unpacked into CACHE/corpus/ (regular files and folders only; links and
special files are left out, which is what a docs tree holds). A rerun
fetches and unpacks nothing it already has. Progress goes to stderr.
`--small` is the quick check of the script: the first few releases of two
small projects, well under a minute.

The machine is usually shared: read the ratios (and CPU times) rather than
the seconds; the load average is printed at the start and at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make import measured, timed  # noqa: E402  (bench/make.py: tree-peak RSS sampling)

# Docs-heavy pure-Python projects whose every release together unpacks to
# about 2.7 GB: Sphinx sources, tests, code. The redeploy adds the last
# project's newest release.
DEFAULT_PROJECTS = "pygments,werkzeug,flask,jinja2,requests,click,docutils"
SMALL_PROJECTS = "itsdangerous,markupsafe"
SMALL_RELEASES = 3
DATE = "2026-01-01T00:00:00Z"
DEFAULT_CACHE = Path("/tmp/seed-cache")
ORIGINAL_RATIO = 14e9 / 280e6  # the OCaml docteur's announcement: 14 GB into 280 MB
SDIST_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar.bz2")


@dataclass(frozen=True)
class Release:
    project: str
    version: str
    filename: str
    url: str
    sha256: str | None
    size: int | None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def index_url() -> str:
    """pip's index as this machine configures it (only the primary index has sdists here)."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.rstrip("/")
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().rstrip("/")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "https://pypi.org/simple"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(html.parser.HTMLParser):
    """The <a href> of a PEP 503 simple page, with their data-yanked flag."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag != "a":
            return
        a = dict(attrs)
        href = a.get("href") or ""
        path, _, frag = href.partition("#")
        self.files.append({"filename": urllib.parse.unquote(path.rsplit("/", 1)[-1]),
                           "url": path, "hashes": dict([frag.split("=", 1)]) if "=" in frag
                           else {}, "size": None, "yanked": "data-yanked" in a})


def list_files(index: str, project: str) -> list[dict]:
    url = f"{index}/{normalize(project)}/"
    req = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            body, ctype = resp.read(), resp.headers.get("Content-Type", "")
    except OSError as e:  # urllib's HTTPError and URLError are OSErrors
        raise SystemExit(f"seed: {url}: {getattr(e, 'reason', e)} "
                         f"(is {project!r} a project of that index?)") from None
    if "json" in ctype:
        files = json.loads(body)["files"]
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        files = parser.files
    for f in files:
        f["url"] = urllib.parse.urljoin(url, f["url"])
    return files


def version_key(version: str):
    """PEP 440 order where the packaging module knows the version, else a natural sort."""
    try:
        from packaging.version import InvalidVersion, Version
        try:
            return (0, Version(version), ())
        except InvalidVersion:
            pass
    except ImportError:
        pass
    return (1, None, tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                           for p in re.findall(r"\d+|[^\d]+", version)))


def _sortable(key):
    # Version objects do not compare with None: keep the valid ones first.
    return (key[0], key[1] if key[0] == 0 else 0, key[2])


def releases(index: str, project: str) -> list[Release]:
    """Every release of `project` with an sdist, in version order (one sdist each)."""
    prefix = normalize(project) + "-"
    chosen: dict[str, dict] = {}
    for f in list_files(index, project):
        name = f["filename"]
        suffix = next((s for s in SDIST_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        stem = name[:-len(suffix)]
        # the version follows the project's name, however it was spelled then
        for cut in (m.start() for m in re.finditer("-", stem)):
            if normalize(stem[:cut]) + "-" == prefix:
                version = stem[cut + 1:]
                break
        else:
            continue
        if not version or "/" in version or version.startswith("."):
            continue
        old = chosen.get(version)
        if old is None or SDIST_SUFFIXES.index(suffix) < old["rank"]:
            chosen[version] = dict(f, rank=SDIST_SUFFIXES.index(suffix))
    out = [Release(normalize(project), v, f["filename"], f["url"],
                   f.get("hashes", {}).get("sha256"), f.get("size"))
           for v, f in chosen.items()]
    return sorted(out, key=lambda r: _sortable(version_key(r.version)))


def download(rel: Release, dest: Path) -> Path:
    """rel's sdist in dest (fetched once, sha256 checked; a partial file never stays)."""
    path = dest / rel.project / rel.filename
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    for attempt in range(3):
        try:
            with urllib.request.urlopen(rel.url, timeout=300) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            break
        except OSError as e:
            digest = hashlib.sha256()
            if attempt == 2:
                tmp.unlink(missing_ok=True)
                raise SystemExit(f"{rel.url}: download failed: {e}")
            time.sleep(2 + attempt * 5)
    if rel.sha256 and digest.hexdigest() != rel.sha256:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"{rel.url}: sha256 {digest.hexdigest()} is not the index's {rel.sha256}")
    os.replace(tmp, path)
    return path


def _strip_top(names: list[str]) -> str:
    """The single top-level folder every member sits in (an sdist's NAME-VERSION/), or ''."""
    tops = {n.lstrip("./").split("/", 1)[0] for n in names if n.lstrip("./")}
    return tops.pop() + "/" if len(tops) == 1 and any("/" in n for n in names) else ""


def _safe(rel: str) -> str | None:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or parts[0] == ".git" or ".git" in parts:
        return None
    return "/".join(parts)


def unpack(archive: Path, dest: Path) -> None:
    """archive's regular files under dest/, its top folder stripped; all or nothing."""
    if dest.exists():
        return
    stage = dest.with_name(dest.name + ".part")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            top = _strip_top([i.filename for i in infos])
            for i in infos:
                rel = _safe(i.filename.lstrip("./")[len(top):])
                if rel is None or (i.external_attr >> 16) & 0o170000 == 0o120000:
                    continue
                target = stage / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(i) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                if (i.external_attr >> 16) & 0o111:
                    target.chmod(0o755)
    else:
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile()]
            top = _strip_top([m.name for m in members])
            for m in members:
                rel = _safe(m.name.lstrip("./")[len(top):])
                if rel is None:
                    continue
                target = stage / rel
                if target.exists():  # a duplicate member: the tar's last one wins
                    target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                with t.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                if m.mode & 0o111:
                    target.chmod(0o755)
    os.replace(stage, dest)


def fetch(projects: list[str], cache: Path, small: bool, jobs: int) -> tuple[Path, list[Release]]:
    """The corpus folder (CACHE/corpus or CACHE/small) and its releases, in order."""
    index = index_url()
    log(f"index {index}")
    rels: list[Release] = []
    for p in projects:
        found = releases(index, p)
        if small:
            found = found[:SMALL_RELEASES]
        log(f"  {p}: {len(found)} releases with an sdist, "
            f"{sum(r.size or 0 for r in found) / 2**20:.0f} MiB to fetch")
        if not found:
            raise SystemExit(f"seed: {index}: {p} has no source distribution")
        rels += found
    sdists = cache / "sdists"
    corpus = cache / ("small" if small else "corpus")
    done = 0
    start = time.monotonic()

    def one(rel: Release) -> bool:
        """Whether rel needed any work (a download or an unpack)."""
        target = corpus / rel.project / rel.version
        if target.exists() and (sdists / rel.project / rel.filename).exists():
            return False
        unpack(download(rel, sdists), target)
        return True

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for rel, worked in zip(rels, pool.map(one, rels)):
            done += worked
            if worked and done % 10 == 0:
                log(f"  fetched and unpacked {done} releases "
                    f"({time.monotonic() - start:.0f} s, last {rel.project} {rel.version})")
    log(f"  {len(rels)} releases ready, {done} of them fetched or unpacked now "
        f"({time.monotonic() - start:.0f} s)")
    prune(corpus, rels)
    return corpus, rels


def prune(corpus: Path, rels: list[Release]) -> None:
    """Remove from corpus what is not one of rels (another run's projects, an interrupted unpack).

    The corpus is a cache this script owns: the image must hold exactly the
    releases asked for, and any release removed here unpacks again from its
    sdist in seconds.
    """
    wanted = {(r.project, r.version) for r in rels}
    for project in sorted(corpus.iterdir()):
        for version in sorted(project.iterdir()) if project.is_dir() else [project]:
            if (project.name, version.name) not in wanted:
                log(f"  removing {version} from the corpus (not asked for this run)")
                shutil.rmtree(version) if version.is_dir() else version.unlink()
        if project.is_dir() and not any(project.iterdir()):
            project.rmdir()


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for d, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            files += 1
            size += st.st_size
    return files, size


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + sys of the command and its children
    tree_mib: float  # peak of the sampled sum of RSS over the process tree
    proc_mib: float  # largest single process (GNU time's %M)
    out: str = ""

    def __str__(self) -> str:
        return (f"{self.wall:.1f} s ({self.cpu:.1f} s CPU), {self.tree_mib:.0f} MiB tree peak, "
                f"{self.proc_mib:.0f} MiB largest process")


def run(cmd: list[str], **kw) -> Run:
    """`cmd` once in a fresh process: wall, CPU (GNU time's %U+%S), tree and process peaks."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-seed-", suffix=".cpu") as rep, \
            tempfile.TemporaryFile("w+") as out:
        try:
            r = measured(lambda: {"seconds": timed(
                ["/usr/bin/time", "-q", "-f", "%U %S", "-o", rep.name, *cmd], stdout=out,
                **kw)})
        except subprocess.CalledProcessError as e:  # its own message is already on stderr
            raise SystemExit(f"seed: {' '.join(cmd)}: exit status {e.returncode}") from None
        fields = rep.read().split()
        out.seek(0)
        text = out.read()
    # timed's own GNU time reports the wrapper's %M (the largest process below it).
    cpu = float(fields[-2]) + float(fields[-1]) if len(fields) >= 2 else float("nan")
    return Run(r["seconds"], cpu, r["tree_mb"], r["rss_mb"], text)


def docteur(*args: str) -> list[str]:
    return [sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE, *map(str, args)]


def has_base() -> bool:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-m", "docteur_core", "make", "--help"],
                         capture_output=True, text=True, env=env)
    return "--base" in out.stdout


def commit_of(out: str) -> str:
    m = re.search(r"\b[0-9a-f]{40}\b", out)
    return m.group(0) if m else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default=None,
                    help=f"comma-separated project names (default: {DEFAULT_PROJECTS}; "
                         f"with --small: {SMALL_PROJECTS})")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help=f"where sdists and the unpacked corpus are kept between runs "
                         f"(default {DEFAULT_CACHE})")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the images are built (default: a temporary folder, removed)")
    ap.add_argument("--small", action="store_true",
                    help=f"quick check: the first {SMALL_RELEASES} releases of each project "
                         f"(default projects {SMALL_PROJECTS}), corpus in CACHE/small")
    ap.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    ap.add_argument("--fetch-only", action="store_true",
                    help="fetch and unpack the corpus, build nothing")
    ap.add_argument("--no-squashfs", action="store_true", help="skip mksquashfs")
    ap.add_argument("--no-base", action="store_true",
                    help="skip the redeploy (OLD.img and make --base)")
    args = ap.parse_args()
    if not args.fetch_only:
        try:
            import dulwich  # noqa: F401  (docteur make's dependency)
        except ImportError:
            ap.error("docteur's dependencies are missing: run this with the project's venv "
                     "(bash .ci/setup; .venv/bin/python bench/seed.py)")
        if not os.access("/usr/bin/time", os.X_OK):
            ap.error("/usr/bin/time is missing (apt-get install time)")
    projects = [p for p in (args.projects or (SMALL_PROJECTS if args.small
                                              else DEFAULT_PROJECTS)).split(",") if p]
    corpus, rels = fetch(projects, args.cache.resolve(), args.small, args.jobs)
    files, raw = tree_size(corpus)
    by_project = {p: sum(1 for r in rels if r.project == p) for p in map(normalize, projects)}
    print(f"corpus {corpus}: {len(rels)} releases of {len(by_project)} projects "
          f"({', '.join(f'{p} {n}' for p, n in by_project.items())}), "
          f"{files:,} files, {raw:,} bytes ({raw / 1e9:.2f} GB)")
    if args.fetch_only:
        return 0
    print(load() + " at the start")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-seed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        full = work / "full.img"
        log(f"  docteur make (load {os.getloadavg()[0]:.1f})")
        d = run(docteur(corpus, full), env=env)
        size = full.stat().st_size
        print(f"docteur make:              image {size:,} B, {d}")
        print(f"  corpus / image = {raw / size:.1f}x (the original: 14 GB / 280 MB = "
              f"{ORIGINAL_RATIO:.0f}x; goal >= 50x): {raw / size / ORIGINAL_RATIO:.2f} x "
              f"the original's ratio")
        if not args.no_squashfs:
            if shutil.which("mksquashfs"):
                sq = work / "corpus.sqfs"
                log(f"  mksquashfs (load {os.getloadavg()[0]:.1f})")
                q = run(["mksquashfs", str(corpus), str(sq), "-comp", "xz", "-b", "1M",
                         "-noappend", "-quiet", "-no-progress", "-all-root"])
                qsize = sq.stat().st_size
                sq.unlink()
                print(f"mksquashfs -comp xz -b 1M: image {qsize:,} B, {q}")
                print(f"  corpus / squashfs = {raw / qsize:.1f}x; docteur image = "
                      f"{size / qsize:.3f} x squashfs-xz (goal <= 1.0), time "
                      f"{d.wall / q.wall:.2f}x ({d.cpu / q.cpu:.2f}x CPU), memory "
                      f"{d.tree_mib / q.tree_mib:.2f}x (tree peaks)")
            else:
                print("mksquashfs: not installed (apt-get install squashfs-tools); skipped")
        if not args.no_base:
            if has_base():
                last = rels[-1]
                old, new = work / "old.img", work / "new.img"
                log(f"  docteur make OLD without {last.project}/{last.version} "
                    f"(load {os.getloadavg()[0]:.1f})")
                o = run(docteur("--exclude", f"/{last.project}/{last.version}/", corpus, old),
                        env=env)
                print(f"OLD (without {last.project} {last.version}): image "
                      f"{old.stat().st_size:,} B, {o}")
                log(f"  docteur make --base (load {os.getloadavg()[0]:.1f})")
                b = run(docteur("--base", old, corpus, new), env=env)
                nsize = new.stat().st_size
                same = commit_of(b.out) == commit_of(d.out)
                print(f"make --base OLD.img (+ {last.project} {last.version}): image "
                      f"{nsize:,} B, {b}")
                print(f"  rebuild / full build: time {b.wall / d.wall:.3f}x "
                      f"({b.cpu / d.cpu:.3f}x CPU; goal <= 0.10), size {nsize / size:.4f}x "
                      f"(goal within 1 %), memory {b.tree_mib / d.tree_mib:.2f}x; same commit "
                      f"as the full build: {'yes' if same else 'NO'}")
                old.unlink()
                new.unlink()
            else:
                print("make --base: not in this docteur (merge the base branch); skipped")
        full.unlink()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(load() + " at the end (others share the machine: compare ratios and CPU times, "
          "not seconds)")
    return 0


def load() -> str:
    return (f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
            f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.exit(main())
