#!/usr/bin/env python3
"""Time `docteur make --base OLD.img` (a redeploy) against a full build, same run.

usage: python3 bench/rebuild.py CORPUS [--leave-out NAME] [--runs N] [--workdir DIR]
                                       [--source directory,repository]

CORPUS is a folder of release folders, as ../shared/corpus/fetch-sdists.sh
makes them (`fetch-sdists.sh Django 11 /tmp/bench/django11`). OLD's source
is CORPUS without one release (`--leave-out`, default: the newest by
version number), a hard-linked copy; then, each in a fresh process
(bench/measure.py: wall time, CPU time of the process and its git
children, peak RSS):

1. `docteur make OLD_SOURCE old.img` (the image deployed before);
2. `docteur make CORPUS full.img`, the reference: a full build;
3. `docteur make --base old.img CORPUS rebuilt.img`, the rebuild.

All with the same --date, so the full build and the rebuild hold the same
commit (checked). `--source repository` (default: both kinds, one after
the other) does the same with a Git repository of two commits, OLD_SOURCE
then CORPUS (old.img from the first, tagged `old`): there a rebuild hashes
nothing, git already knows every object id, while a directory's rebuild
still reads and hashes every file. Reported: times and their ratio (goal: rebuild <= 0.10 x
full), sizes and their ratio (goal: within 1 %), and the reuse: objects of
the rebuilt image that OLD held, and entries whose compressed bytes are
OLD's as stored (a share of the PACK's bytes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from docteur_core.format import layout  # noqa: E402
from docteur_core.format.pack import parse_entry_header  # noqa: E402
from measure import best, load  # noqa: E402

DATE = "2026-01-01T00:00:00Z"


def version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def entries(image: Path) -> tuple[dict[bytes, bytes], int]:
    """{object id: its entry's compressed bytes (after the header and base)}, PACK size."""
    data = image.read_bytes()
    header = layout.parse_header(data, len(data))
    at = header.idx_offset
    n = struct.unpack_from(">I", data, at + 8 + 255 * 4)[0]
    names = at + 8 + 1024
    offsets, large = [], 0
    for i in range(n):
        off = struct.unpack_from(">I", data, names + 24 * n + 4 * i)[0]
        if off & 0x80000000:
            large += 1
            off = struct.unpack_from(">Q", data, names + 28 * n + 8 * (off & 0x7FFFFFFF))[0]
        offsets.append((off, data[names + 20 * i:names + 20 * i + 20]))
    offsets.sort()
    # The PACK ends with its checksum, which the IDX copies after its tables.
    trailer = data[names + 28 * n + 8 * large:][:20]
    pack_end = data.index(trailer, layout.PACK_OFFSET + offsets[-1][0]) - layout.PACK_OFFSET
    out = {}
    for i, (off, sha) in enumerate(offsets):
        end = offsets[i + 1][0] if i + 1 < len(offsets) else pack_end
        raw = data[layout.PACK_OFFSET + off:layout.PACK_OFFSET + end]
        out[sha] = raw[parse_entry_header(raw, "bench", max_size=None).header_len:]
    return out, pack_end + 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--leave-out", metavar="NAME", help="the release OLD lacks "
                    "(default: the newest folder by version number)")
    ap.add_argument("--runs", type=int, default=1, help="best of N for each build")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--source", default="directory,repository",
                    help="which kinds of source to measure (default: both)")
    args = ap.parse_args()
    releases = sorted((p.name for p in args.corpus.iterdir() if p.is_dir()), key=version_key)
    left = args.leave_out or releases[-1]
    if left not in releases:
        raise SystemExit(f"{args.corpus}: no release folder {left}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-rebuild-"))
    work.mkdir(parents=True, exist_ok=True)
    old_src = work / "old-source"
    if old_src.exists():
        shutil.rmtree(old_src)
    old_src.mkdir()
    for name in releases:
        if name != left:
            os.system(f"cp -al '{args.corpus / name}' '{old_src / name}'")
    print(f"corpus {args.corpus}: {len(releases)} releases; OLD without {left}")
    for kind in args.source.split(","):
        if kind == "directory":
            run(args, work / "directory", old_src, args.corpus, [], [], len(releases))
        elif kind == "repository":
            repo = repository(work / "repo.git", old_src, args.corpus / left, left)
            run(args, work / "repository", repo, repo, ["--branch", "old"], [], len(releases))
        else:
            raise SystemExit(f"--source {kind}: directory or repository")
    return 0


GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "GIT_AUTHOR_DATE": DATE, "GIT_COMMITTER_DATE": DATE,
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


def repository(git_dir: Path, old_src: Path, added: Path, name: str) -> Path:
    """A bare repository: OLD_SOURCE committed (tag `old`), then with release `name` added."""
    import subprocess

    if git_dir.exists():
        shutil.rmtree(git_dir)
    env = dict(os.environ, **GIT_ENV, GIT_DIR=str(git_dir), GIT_WORK_TREE=str(old_src))

    def g(*a):
        subprocess.run(["git", *a], env=env, check=True, cwd=old_src,
                       stdout=subprocess.DEVNULL)

    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    g("add", "-A", "--force", ".")
    g("commit", "-q", "-m", "old")
    g("tag", "old")
    os.system(f"cp -al '{added}' '{old_src / name}'")
    try:
        g("add", "-A", "--force", ".")
        g("commit", "-q", "-m", f"add {name}")
    finally:
        shutil.rmtree(old_src / name)
    return git_dir


def run(args, work: Path, old_source: Path, source: Path, old_opts: list[str],
        opts: list[str], releases: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    make = [sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE]
    print(f"-- {work.name} source; {load()}")
    old = best(make + old_opts + [str(old_source), str(work / "old.img")], args.runs)
    print(f"old.img ({releases - 1} releases), full build: {old}")
    full = best(make + opts + [str(source), str(work / "full.img")], args.runs)
    print(f"full.img ({releases} releases), full build:   {full}")
    rebuilt = best(make + opts + ["--base", str(work / "old.img"), str(source),
                           str(work / "rebuilt.img")], args.runs)
    print(f"rebuilt.img, --base old.img:             {rebuilt}")
    print(f"load after: {load()}")
    a, b = (work / "full.img").read_bytes()[:20], (work / "rebuilt.img").read_bytes()[:20]
    if a != b:
        raise SystemExit("the rebuild holds another commit than the full build")
    fsize, rsize = (work / "full.img").stat().st_size, (work / "rebuilt.img").stat().st_size
    old_entries, _ = entries(work / "old.img")
    new_entries, pack_size = entries(work / "rebuilt.img")
    held = [sha for sha in new_entries if sha in old_entries]
    same = [sha for sha in held if new_entries[sha] == old_entries[sha]]
    same_bytes = sum(len(new_entries[sha]) for sha in same)
    print(f"time: rebuild / full = {rebuilt.wall / full.wall:.3f} wall, "
          f"{rebuilt.cpu / full.cpu:.3f} CPU (goal <= 0.10)")
    print(f"size: full {fsize:,} B, rebuilt {rsize:,} B, ratio {rsize / fsize:.4f} "
          "(goal within 1 %)")
    print(f"reuse: {len(held):,} of {len(new_entries):,} objects held by OLD "
          f"({len(held) / len(new_entries):.1%}); {len(same):,} entries as OLD stored them, "
          f"{same_bytes:,} of {pack_size:,} PACK bytes ({same_bytes / pack_size:.1%})")


if __name__ == "__main__":
    sys.exit(main())
