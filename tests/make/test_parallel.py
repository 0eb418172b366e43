"""The parallel delta search: same image whatever the number of workers (see make/parallel)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docteur_core.make import make_image, parallel
from docteur_core.make.parallel import Obj, delta_order, name_hash, plan_parts
from docteur_core.errors import BuildError
from tests.helpers.gitoracle import check_image, image_listing, source_listing

DATE = "2026-01-01T00:00:00Z"
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- git's name hash ----------------------------------------------------------

def test_name_hash_is_gits():
    """pack_name_hash: hash = (hash >> 2) + (c << 24), white space skipped, 32 bits."""
    assert name_hash(b"") == 0
    assert name_hash(b"a") == 0x61000000
    assert name_hash(b"ab") == (0x61000000 >> 2) + 0x62000000
    assert name_hash(b"a b\t\n\r") == name_hash(b"ab")
    assert name_hash(b"a\x0bb") != name_hash(b"ab")  # \v is not space to git
    assert name_hash(b"\xe9") == 0xE9000000  # high bytes: as unsigned
    assert name_hash(b"x" * 100) < 1 << 32
    # The last characters weigh most: same suffix, near hashes.
    assert name_hash(b"dir/a/Makefile") >> 24 == name_hash(b"other/Makefile") >> 24


# --- the plan (pure) ----------------------------------------------------------

objects_st = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 5000),
                                st.integers(0, 6)), max_size=200).map(
    lambda items: [Obj(b"%040d" % i, t, size, h) for i, (t, size, h) in enumerate(items)])


@settings(max_examples=300, deadline=None)
@given(objects_st, st.integers(1, 20000), st.integers(1, 30), st.integers(0, 5000))
def test_plan_parts_cuts_git_order_at_fixed_places(objects, part_bytes, part_objects,
                                                   cut_size):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parallel, "CUT_SIZE", cut_size)
        parts = plan_parts(objects, part_bytes, part_objects)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(objects)))  # a partition
    assert all(part == sorted(part) for part in parts)  # each in rev-list order
    assert [p[0] for p in parts] == sorted(p[0] for p in parts)  # the commit's part first
    order = delta_order(objects)
    position = {i: n for n, i in enumerate(order)}
    by_start = sorted(parts, key=lambda p: min(position[i] for i in p))
    start = 0
    for n, part in enumerate(by_start):
        ranks = sorted(position[i] for i in part)
        assert ranks == list(range(start, start + len(part)))  # contiguous in git's order
        start += len(part)
        if n < len(by_start) - 1:
            assert sum(objects[i].size for i in part) >= part_bytes  # full before a cut
            assert len(part) >= part_objects
            last, following = order[ranks[-1]], order[ranks[-1] + 1]
            # never between two objects of one type and name hash (a file's versions)
            assert (objects[last].type, objects[last].hash) != \
                   (objects[following].type, objects[following].hash)
            assert max(objects[last].size, objects[following].size) <= cut_size


def test_plan_parts_examples():
    objects = [Obj(b"%040d" % i, 3, 10, i) for i in range(50)]
    assert plan_parts(objects, 10 * 50, 1) == [list(range(50))]
    assert plan_parts(objects, 1, 50) == [list(range(50))]
    # hash = index, git's order 49..0; past the minimum, the cut goes where the
    # neighbours' hashes differ in the highest bit (32|31, then 16|15, then 4|3)
    assert [(p[0], p[-1]) for p in plan_parts(objects, 100, 1)] == [(0, 3), (4, 15), (16, 31),
                                                                    (32, 49)]
    assert [(p[0], p[-1]) for p in plan_parts(objects, 100, 20)] == [(0, 15), (16, 49)]
    big = [Obj(o.line, 3, 100 << 10 if 10 <= i < 30 else 10, i) for i, o in enumerate(objects)]
    # no cut beside 29..10 (over CUT_SIZE): the part from 31 runs on to 8|7
    assert [(p[0], p[-1]) for p in plan_parts(big, 1, 5)] == [(0, 1), (2, 7), (8, 31), (32, 49)]


def test_window_bytes():
    objects = [Obj(b"%040d" % i, 3, size, 0) for i, size in enumerate([5, 1, 7, 3, 2])]
    # git's order: size descending within one hash: 7 5 3 2 1
    assert parallel.window_bytes(objects, range(5), window=2) == 12
    assert parallel.window_bytes(objects, range(5), window=10) == 18
    assert parallel.window_bytes(objects, [1, 4], window=1) == 2


# --- real builds --------------------------------------------------------------

def versions_site(root: Path, seed: int = 16) -> Path:
    """Several releases of a small project: files that delta against each other."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(rng.randint(3, 12)))
             for _ in range(400)]
    base = {f"pkg/mod{i}.py": b"\n".join(rng.choice(words) for _ in range(300))
            for i in range(12)}
    base["README"] = b"\n".join(rng.choice(words) for _ in range(200))
    for release in range(5):
        for name, content in base.items():
            path = root / f"release-{release}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        for name in list(base):
            lines = base[name].split(b"\n")
            for _ in range(10):
                lines[rng.randrange(len(lines))] = rng.choice(words)
            base[name] = b"\n".join(lines)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return versions_site(tmp_path_factory.mktemp("versions") / "site")


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 20 kB: several parts from a small tree (as big trees get with the default)."""
    monkeypatch.setattr(parallel, "PART_BYTES", 20_000)
    monkeypatch.setattr(parallel, "PART_OBJECTS", 1)
    monkeypatch.setattr(parallel, "CUT_SIZE", 1 << 20)


def test_image_is_the_same_whatever_the_worker_count(site, tmp_path, small_parts):
    images = {}
    for jobs in (1, 2, 5):
        out = tmp_path / f"j{jobs}.img"
        make_image(site, out, date=DATE, jobs=jobs, warn=lambda _: None)
        images[jobs] = out.read_bytes()
    assert images[1] == images[2] == images[5]
    checked = check_image(tmp_path / "j2.img", tmp_path)  # git's index-pack: the same .idx
    assert image_listing(checked.git_dir, checked.commit) == source_listing(site)
    # Several parts were packed (and the deltas inside them kept: smaller than the content).
    assert len(checked.pack) < sum(len(p.read_bytes()) for p in site.rglob("*") if p.is_file())


def test_parts_hold_the_same_tree_as_one_pack(site, tmp_path, monkeypatch):
    one = make_image(site, tmp_path / "one.img", date=DATE, jobs=2, warn=lambda _: None)
    monkeypatch.setattr(parallel, "PART_BYTES", 20_000)
    monkeypatch.setattr(parallel, "PART_OBJECTS", 1)
    monkeypatch.setattr(parallel, "CUT_SIZE", 1 << 20)
    many = make_image(site, tmp_path / "many.img", date=DATE, jobs=2, warn=lambda _: None)
    assert (one.commit, one.tree, one.objects) == (many.commit, many.tree, many.objects)
    assert (tmp_path / "one.img").read_bytes() != (tmp_path / "many.img").read_bytes()


def test_repository_source_in_parts(site, tmp_path, small_parts):
    """A Git repository (objects through alternates) is split the same way."""
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(site), str(repo)], check=True)
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b", "GIT_AUTHOR_DATE": DATE, "GIT_COMMITTER_DATE": DATE,
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "v"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    a = make_image(repo, tmp_path / "a.img", jobs=1, warn=lambda _: None)
    b = make_image(repo, tmp_path / "b.img", jobs=2, warn=lambda _: None)
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    assert check_image(tmp_path / "a.img", tmp_path).objects == a.objects == b.objects


def test_cli_jobs_variable(site, tmp_path):
    """$DOCTEUR_JOBS picks the worker count (never the bytes); a bad value is one line."""
    def make(jobs: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE,
                               str(site), str(out)], capture_output=True, text=True,
                              cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin",
                                                  parallel.JOBS_ENV: jobs})
    assert make("1", tmp_path / "1.img").returncode == 0
    assert make("3", tmp_path / "3.img").returncode == 0
    assert (tmp_path / "1.img").read_bytes() == (tmp_path / "3.img").read_bytes()
    bad = make("zero", tmp_path / "bad.img")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "docteur make: DOCTEUR_JOBS='zero': expected a whole number of at least 1"]
    assert not (tmp_path / "bad.img").exists()


def test_bad_jobs_variable_in_process(monkeypatch):
    monkeypatch.setenv(parallel.JOBS_ENV, "0")
    with pytest.raises(BuildError, match="DOCTEUR_JOBS='0'"):
        parallel.default_jobs()
