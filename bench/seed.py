#!/usr/bin/env python3
"""The original docteur's headline, measured on a corpus of the same kind (issue 23 item 3).

The OCaml docteur was announced with "the documentation of several OPAM
packages with all their versions, 14 GB" made into a 280 MB image: 50x.
This benchmark builds the same kind of corpus from the package index this
machine uses (pip's configured index: PIP_INDEX_URL or `pip config`'s
global.index-url, else https://pypi.org/simple): every release of several
projects' source distributions (their docs and code), unpacked one folder
per release, CORPUS/PROJECT/VERSION/, releases in version order.

usage: python3 bench/seed.py [--projects a,b,...] [--cache DIR] [--small]
                             [--fetch-only] [--no-squashfs] [--no-base]

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
# about 2.5 GB: Sphinx sources and often built HTML, tests, code.
DEFAULT_PROJECTS = "docutils,pygments,werkzeug,flask,jinja2,requests,click,alembic"
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
    with urllib.request.urlopen(req, timeout=120) as resp:
        body, ctype = resp.read(), resp.headers.get("Content-Type", "")
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
        rels += found
    sdists = cache / "sdists"
    corpus = cache / ("small" if small else "corpus")
    done = 0
    start = time.monotonic()

    def one(rel: Release) -> Release:
        unpack(download(rel, sdists), corpus / rel.project / rel.version)
        return rel

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for rel in pool.map(one, rels):
            done += 1
            if done % 10 == 0 or done == len(rels):
                log(f"  fetched and unpacked {done}/{len(rels)} "
                    f"({time.monotonic() - start:.0f} s, last {rel.project} {rel.version})")
    return corpus, rels


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for d, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            files += 1
            size += st.st_size
    return files, size
