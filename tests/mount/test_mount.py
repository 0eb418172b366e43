"""`docteur mount` / `docteur umount`: real FUSE mounts (libfuse 3 through
mfusepy), read with the host's own tools (find, cat, stat, diff, ls), the
command run as users run it (`python -m docteur_core mount ...`).

Every mount a test makes is unmounted and its process killed at the end,
whatever the test's outcome (the `mounts` fixture).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.make import make_image
from docteur_core.format.limits import STREAM_THRESHOLD
from docteur_core.mount.fs import ImageFS, inode_of
from docteur_core.reader import Image

from tests.helpers.mounts import serving_pids
from tests.helpers.forge import Obj, build, commit, hostile_image, tree
from tests.helpers.support import alive, free_port, one_line, wait_gone
from tests.helpers.treegen import GENERATED_DATE as DATE_GENERATED, git_trees as trees
from tests.helpers.treegen import source_of

pytestmark = [pytest.mark.fuse]

DOCTEUR = [sys.executable, "-m", "docteur_core"]
DATE = "2024-01-02T03:04:05Z"
DATE_SECONDS = 1704164645
DATE_SECONDS_GENERATED = 1767225600  # tests.helpers.treegen.GENERATED_DATE
# A deadline against hangs only: nothing is asserted about how long things take.
PATIENCE = 60.0


def docteur(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout)


# -- images ----------------------------------------------------------------------

def _big(seed: int, size: int) -> bytes:
    """Bytes that compress about 2:1 (cheap to build), not repetitive enough
    for git to store them as a delta of anything."""
    rnd = random.Random(seed)
    return rnd.randbytes(size).translate(bytes(range(16)) * 16)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    """(source directory, image of it) with files, an executable, links
    (one leaving the tree), an empty directory, nested ones, a name that is
    not ASCII, a large file stored whole and a pair git stores as a delta."""
    src = tmp_path_factory.mktemp("site")
    (src / "index.html").write_text("<h1>hello</h1>\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a\n")
    (src / "docs" / "deep" / "été.md").write_text("accents\n")
    (src / os.fsdecode(b"not-utf8-\xff")).write_text("bytes\n")  # a name git keeps as bytes
    (src / "empty").mkdir()
    (src / "link").symlink_to("index.html")
    (src / "docs" / "up").symlink_to("../index.html")
    (src / "escape").symlink_to("../../../../../etc/passwd")
    base = random.Random(7).randbytes(200_000)
    (src / "v1.bin").write_bytes(base)
    (src / "v2.bin").write_bytes(base[:100_000] + b"changed" + base[100_000:])
    (src / "large.bin").write_bytes(_big(1, STREAM_THRESHOLD + 3_000_001))
    image = tmp_path_factory.mktemp("img") / "site.img"
    make_image(src, image, date=DATE)
    return src, image


def _empty_dir(tmp_path: Path, name: str = "mnt") -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


# -- a mount reads as its source -------------------------------------------------

@pytest.mark.parametrize("mode", ["fast", "light"])
def test_a_mount_reads_as_its_source(site, tmp_path, mounts, mode):
    src, image = site
    mnt = _empty_dir(tmp_path)
    pid = mounts.mount(image, mnt, "--mode", mode)
    assert alive(pid)
    # diff -r compares every file's bytes, every link's target, every name.
    done = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mnt)],
                          capture_output=True, text=True, errors="surrogateescape")
    assert done.returncode == 0, done.stdout + done.stderr
    listing = lambda top: sorted(subprocess.run(  # noqa: E731
        ["find", ".", "-printf", "%y %P\n"], cwd=top, capture_output=True,
        check=True).stdout.splitlines())
    assert listing(mnt) == listing(src)
    assert subprocess.run(["cat", str(mnt / "docs" / "deep" / "été.md")], capture_output=True,
                          check=True).stdout == b"accents\n"
    # Modes, sizes, dates, links.
    modes = {"index.html": 0o100444, "run.sh": 0o100555, "docs": 0o40555, "empty": 0o40555,
             "link": 0o120777}
    for name, mode in modes.items():
        s = os.lstat(mnt / name)
        assert s.st_mode == mode, name
        assert s.st_mtime == s.st_ctime == DATE_SECONDS
    assert os.lstat(mnt / "large.bin").st_size == (src / "large.bin").stat().st_size
    assert os.readlink(mnt / "escape") == "../../../../../etc/passwd"
    assert os.readlink(mnt / "docs" / "up") == "../index.html"
    ls = subprocess.run(["ls", "-l", str(mnt)], capture_output=True, text=True,
                        errors="surrogateescape", check=True).stdout
    assert "-r--r--r-- 1 " in ls and "-r-xr-xr-x 1 " in ls and "dr-xr-xr-x " in ls
    assert "link -> index.html" in ls
    stat_out = subprocess.run(["stat", "-c", "%A %s %Y", str(mnt / "run.sh")],
                              capture_output=True, text=True, check=True).stdout
    assert stat_out.split() == ["-r-xr-xr-x", "18", str(DATE_SECONDS)]
    # Unmounted by docteur umount: nothing mounted, no process left.
    done = docteur("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mnt)
    assert wait_gone(pid)
    assert os.listdir(mnt) == []


def test_inode_numbers_are_stable_and_distinct(site, tmp_path, mounts):
    _, image = site
    first, second = _empty_dir(tmp_path, "one"), _empty_dir(tmp_path, "two")
    mounts.mount(image, first)
    mounts.mount(image, second, "--mode", "light")
    names = ["", "index.html", "docs", "docs/a.txt", "docs/deep/été.md", "link", "empty"]
    inodes = [os.lstat(first / n).st_ino for n in names]
    assert inodes == [os.lstat(second / n).st_ino for n in names]
    assert inodes == [inode_of(n) for n in names]
    assert len(set(inodes)) == len(inodes)
    # v1.bin and v2.bin are different objects; two paths of one object too
    # would have two numbers: they are not hard links.
    assert os.lstat(first / "v1.bin").st_nlink == 1


def test_reads_at_offsets_of_a_large_file_stored_whole(site, tmp_path, mounts):
    """The file is over the object size limit given: only reads that do not
    hold it whole can answer (reader/partial.py), at any offset, in any
    order, and they give the source's bytes."""
    src, image = site
    with Image.open(image) as img:
        assert img.store.object_size(bytes.fromhex(img.digest("large.bin"))) > 1 << 20
    mnt = _empty_dir(tmp_path)
    mounts.mount(image, mnt, "--max-object-size", str(1 << 20))
    want = (src / "large.bin").read_bytes()
    rnd = random.Random(5)
    fd = os.open(mnt / "large.bin", os.O_RDONLY)
    try:
        offsets = [0, len(want) - 1, len(want) - 4096, STREAM_THRESHOLD, 1]
        offsets += [rnd.randrange(len(want)) for _ in range(30)]
        for off in offsets:
            n = rnd.choice([1, 4096, 131072, 1 << 20])
            assert os.pread(fd, n, off) == want[off:off + n], off
        assert os.pread(fd, 10, len(want)) == b""
    finally:
        os.close(fd)
    with open(mnt / "v2.bin", "rb") as f:  # stored as a delta of v1.bin
        assert f.read() == (src / "v2.bin").read_bytes()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, STREAM_THRESHOLD + 3_000_010),
                                st.integers(0, 300_000)), min_size=1, max_size=12))
def test_get_partial_is_a_slice_of_the_file(site, reads):
    src, image = site
    want = (src / "large.bin").read_bytes()
    with Image.open(image, "light", max_object_size=1 << 20) as img:
        for offset, length in reads:
            assert img.get_partial("large.bin", offset, length) == want[offset:offset + length]


def test_writes_are_refused_with_erofs(site, tmp_path, mounts):
    _, image = site
    mnt = _empty_dir(tmp_path)
    mounts.mount(image, mnt)
    attempts = [
        lambda: open(mnt / "new.txt", "w"),
        lambda: open(mnt / "index.html", "r+b"),
        lambda: open(mnt / "index.html", "ab"),
        lambda: os.mkdir(mnt / "newdir"),
        lambda: os.unlink(mnt / "index.html"),
        lambda: os.rmdir(mnt / "empty"),
        lambda: os.rename(mnt / "index.html", mnt / "moved"),
        lambda: os.chmod(mnt / "index.html", 0o777),
        lambda: os.symlink("x", mnt / "newlink"),
        lambda: os.truncate(mnt / "index.html", 0),
        lambda: os.utime(mnt / "index.html"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt
    assert os.statvfs(mnt).f_flag & os.ST_RDONLY
    assert (mnt / "index.html").read_text() == "<h1>hello</h1>\n"


def test_the_handlers_refuse_writes_too(site):
    """Even if the kernel asked (a mount without `ro`), the answer is EROFS."""
    import mfusepy

    from docteur_core.mount.command import make_operations

    _, image = site
    with Image.open(image) as img:
        ops = make_operations(mfusepy, ImageFS(img))
        for call in (lambda: ops.write("/index.html", b"x", 0, 0),
                     lambda: ops.create("/n", 0o644), lambda: ops.mkdir("/d", 0o755),
                     lambda: ops.unlink("/index.html"), lambda: ops.truncate("/index.html", 0),
                     lambda: ops.open("/index.html", os.O_WRONLY),
                     lambda: ops.access("/index.html", os.W_OK)):
            with pytest.raises(mfusepy.FuseOSError) as info:
                call()
            assert info.value.errno == errno.EROFS


# -- refusals: one line, exit 1, nothing mounted, nothing left -------------------

@pytest.mark.nbdkit
def test_bad_mount_points_and_sources_are_one_line(site, tmp_path):
    _, image = site
    full = _empty_dir(tmp_path, "full")
    (full / "x").write_text("x")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    junk = tmp_path / "junk.img"
    junk.write_bytes(random.Random(1).randbytes(8192))
    mnt = _empty_dir(tmp_path)
    cases = [
        ((image, full), "not empty"),
        ((image, tmp_path / "missing"), "no such directory"),
        ((image, a_file), "not a directory"),
        ((tmp_path / "missing.img", mnt), "missing.img"),
        ((junk, mnt), "not a docteur image"),
        ((f"nbd://127.0.0.1:{free_port()}/", mnt), "nbd://127.0.0.1"),
    ]
    for args, words in cases:
        done = docteur("mount", *args)
        assert done.returncode == 1, (args, done.stderr)
        line = one_line(done.stderr)
        assert line.startswith("docteur mount: ") and words in line, line
        assert not os.path.ismount(mnt)
        assert serving_pids(mnt) == [] and serving_pids(full) == []
    assert os.listdir(mnt) == []


def test_a_second_mount_on_a_mount_point_is_refused(site, tmp_path, mounts):
    _, image = site
    mnt = _empty_dir(tmp_path)
    pid = mounts.mount(image, mnt)
    done = docteur("mount", image, mnt)
    assert done.returncode == 1
    assert "not empty" in one_line(done.stderr)  # it shows the image's files
    assert serving_pids(mnt) == [pid]


def test_umount_leaves_other_mounts_alone(tmp_path):
    done = docteur("umount", tmp_path)
    assert done.returncode == 1 and "not a mount point" in one_line(done.stderr)
    done = docteur("umount", "/proc")
    assert done.returncode == 1 and "not docteur's" in one_line(done.stderr)
    assert os.path.ismount("/proc")


def test_without_the_binding_one_line_says_what_to_install(site, tmp_path):
    _, image = site
    code = ("import sys; sys.modules['mfusepy'] = None\n"
            "from docteur_core.cli import main\n"
            f"sys.exit(main(['mount', {str(image)!r}, {str(_empty_dir(tmp_path))!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          errors="surrogateescape")
    assert done.returncode == 1
    assert "pip install 'docteur[mount]'" in one_line(done.stderr)


# -- foreground, NBD ---------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_unmounts_on_a_signal(site, tmp_path, mounts, sig):
    _, image = site
    mnt = _empty_dir(tmp_path)
    proc = mounts.foreground(image, mnt)
    assert (mnt / "docs" / "a.txt").read_text() == "a\n"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not os.path.ismount(mnt)


def test_fusermount_u_unmounts_and_the_process_exits(site, tmp_path, mounts):
    _, image = site
    mnt = _empty_dir(tmp_path)
    pid = mounts.mount(image, mnt)
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert wait_gone(pid)
    assert not os.path.ismount(mnt)


def test_umount_clears_the_mount_of_a_killed_process(site, tmp_path, mounts):
    _, image = site
    mnt = _empty_dir(tmp_path)
    pid = mounts.mount(image, mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.ENOTCONN
    done = docteur("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert os.listdir(mnt) == []


@pytest.mark.nbdkit
def test_a_mount_of_an_nbd_uri_served_by_docteur_serve(site, tmp_path, mounts):
    src, image = site
    port = free_port()
    pidfile = tmp_path / "nbdkit.pid"
    done = docteur("serve", "--port", port, "--pidfile", pidfile, image)
    assert done.returncode == 0, done.stderr
    nbdkit = int(pidfile.read_text())
    try:
        mnt = _empty_dir(tmp_path)
        pid = mounts.mount(f"nbd://127.0.0.1:{port}/", mnt)
        done = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mnt)],
                              capture_output=True, text=True, errors="surrogateescape")
        assert done.returncode == 0, done.stdout + done.stderr
        assert docteur("umount", mnt).returncode == 0
        assert wait_gone(pid)
    finally:
        os.kill(nbdkit, signal.SIGTERM)
        wait_gone(nbdkit)


# -- hostile images ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", "/etc", "../x", "."])
def test_hostile_names_are_refused(tmp_path, mounts, name):
    """fast mode reads every tree at mount time: refused there, one line;
    light mode (the default) mounts, and the directory holding the name
    reads as EIO, never as an entry naming something outside."""
    blob = Obj("blob", b"pwned\n")
    inner = Obj("tree", tree(("100644", "pwned", blob.oid)))
    image = tmp_path / "hostile.img"
    hostile_image(image, [("40000", name, inner), ("100644", "ok", blob)])
    mnt = _empty_dir(tmp_path)
    done = docteur("mount", "--mode", "fast", image, mnt)
    assert done.returncode == 1
    assert "damaged image" in one_line(done.stderr)
    assert not os.path.ismount(mnt)
    mounts.mount(image, mnt)
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.EIO


def test_in_the_foreground_an_eio_says_why_on_stderr(tmp_path, mounts):
    blob = Obj("blob", b"x\n")
    inner = Obj("tree", tree(("100644", "x", blob.oid)))
    image = tmp_path / "hostile.img"
    hostile_image(image, [("40000", "..", inner)])
    mnt = _empty_dir(tmp_path)
    proc = mounts.foreground(image, mnt, "--mode", "light")
    for _ in range(2):  # said once
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.EIO
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0
    reasons = [line for line in err.splitlines() if "damaged image" in line]
    assert len(reasons) == 1 and "illegal name" in reasons[0], err
    assert "Traceback" not in err


def test_hostile_links_are_shown_as_stored_and_never_followed_inside(tmp_path, mounts):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    target = Obj("blob", str(outside).encode())
    nul = Obj("blob", b"a\0b")
    empty = Obj("blob", b"")
    image = tmp_path / "links.img"
    hostile_image(image, [("120000", "abs", target), ("120000", "empty", empty),
                           ("120000", "nul", nul)])
    mnt = _empty_dir(tmp_path)
    mounts.mount(image, mnt)
    assert os.readlink(mnt / "abs") == str(outside)
    # The kernel follows it on the host, as for any file system's link...
    assert (mnt / "abs").read_text() == "secret\n"
    # ...but never inside the image, nor with O_NOFOLLOW.
    with pytest.raises(OSError) as info:
        os.open(mnt / "abs", os.O_RDONLY | os.O_NOFOLLOW)
    assert info.value.errno == errno.ELOOP
    for name in ("empty", "nul"):  # no kernel link can hold these: EIO
        with pytest.raises(OSError) as info:
            os.readlink(mnt / name)
        assert info.value.errno == errno.EIO


def test_a_submodule_is_an_empty_directory(tmp_path, mounts):
    blob = Obj("blob", b"x\n")
    image = tmp_path / "sub.img"
    gitlink = Obj("blob", b"", oid=bytes.fromhex("12" * 20))
    t = Obj("tree", tree(("100644", "file", blob.oid), ("160000", "vendor", gitlink.oid)))
    c = Obj("commit", commit(t.oid))
    image.write_bytes(bytes(build([c, t, blob], c.oid)))
    mnt = _empty_dir(tmp_path)
    mounts.mount(image, mnt)
    assert sorted(os.listdir(mnt)) == ["file", "vendor"]
    assert stat.S_ISDIR(os.stat(mnt / "vendor").st_mode)
    assert os.listdir(mnt / "vendor") == []


# -- the mapping itself, without a mount ---------------------------------------------

def _expected_mode(path: bytes) -> int:
    s = os.lstat(path)
    if stat.S_ISLNK(s.st_mode):
        return 0o120777
    if stat.S_ISDIR(s.st_mode):
        return 0o40555
    return 0o100555 if s.st_mode & 0o100 else 0o100444


@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=trees, mode=st.sampled_from(["light", "fast"]))
def test_generated_trees_answer_as_their_source(spec, mode):
    """Odd names (bytes that are not UTF-8 included), links anywhere,
    empty directories: every path's stat, listing, link target and bytes
    answer as the source directory's, with the modes the mount gives."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = source_of(spec, tmp)
        make_image(src, tmp / "out.img", date=DATE_GENERATED, warn=lambda w: None)
        with Image.open(tmp / "out.img", mode) as image:
            fs = ImageFS(image, 1000, 1000)
            root = os.fsencode(src)
            for top, dirs, files in os.walk(root):
                rel = os.path.relpath(top, root)
                at = "/" if rel == b"." else "/" + os.fsdecode(rel)
                names = [n for n, _, _ in fs.readdir(at)]
                assert names[:2] == [".", ".."]
                assert sorted(names[2:]) == sorted(os.fsdecode(n) for n in dirs + files)
                for name in dirs + files:
                    path = os.path.join(top, name)
                    key = at.rstrip("/") + "/" + os.fsdecode(name)
                    attrs = fs.getattr(key)
                    assert attrs["st_mode"] == _expected_mode(path), key
                    assert attrs["st_mtime"] == DATE_SECONDS_GENERATED * 10**9
                    assert (attrs["st_uid"], attrs["st_gid"]) == (1000, 1000)
                    if os.path.islink(path):
                        assert fs.readlink(key) == os.fsdecode(os.readlink(path))
                        assert attrs["st_size"] == len(os.readlink(path))
                    elif os.path.isfile(path):
                        with open(path, "rb") as f:
                            want = f.read()
                        assert attrs["st_size"] == len(want)
                        assert fs.read(key, len(want) + 10, 0) == want
                        assert fs.read(key, 3, 1) == want[1:4]


def test_the_mapping_answers_errnos(site):
    from docteur_core.mount.fs import FsError

    _, image = site
    with Image.open(image) as img:
        fs = ImageFS(img)
        cases = [(lambda: fs.getattr("/missing"), errno.ENOENT),
                 (lambda: fs.getattr("/index.html/x"), errno.ENOTDIR),
                 (lambda: fs.readdir("/index.html"), errno.ENOTDIR),
                 (lambda: fs.read("/docs", 10, 0), errno.EISDIR),
                 (lambda: fs.readlink("/index.html"), errno.EINVAL),
                 (lambda: fs.open("/index.html", os.O_RDWR), errno.EROFS),
                 (lambda: fs.open("/docs", os.O_RDONLY), errno.EISDIR)]
        for call, code in cases:
            with pytest.raises(FsError) as info:
                call()
            assert info.value.errno == code
        assert fs.read("/index.html", 100, 1000) == b""
        assert fs.getattr("/docs")["st_nlink"] == 3  # ., .. and deep
        assert fs.getattr("/")["st_ino"] == 1


# -- damage inside a large file stored whole ------------------------------------------

def _large_whole_image(path: Path, data: bytes, declared: int | None = None) -> bytes:
    """An image whose file `big` is one blob stored whole; returns its id."""
    blob = Obj("blob", data, size=declared)
    t = Obj("tree", tree(("100644", "big", blob.oid)))
    c = Obj("commit", commit(t.oid))
    path.write_bytes(bytes(build([c, t, blob], c.oid)))
    return blob.oid


def test_a_wrong_crc_in_the_idx_is_found_when_a_read_reaches_the_end(tmp_path):
    from docteur_core.errors import DamagedImage
    from docteur_core.format import layout

    data = _big(3, STREAM_THRESHOLD + 100_000)
    image = tmp_path / "crc.img"
    oid = _large_whole_image(image, data)
    raw = bytearray(image.read_bytes())
    base = layout.parse_header(bytes(raw[:layout.HEADER_SIZE]), len(raw)).idx_offset
    with Image.open(image, "light") as img:
        ids = sorted(bytes.fromhex(x) for x in (img.commit.id, img.commit.tree, oid.hex()))
    crc_at = base + 8 + 1024 + 20 * len(ids) + 4 * ids.index(oid)
    raw[crc_at] ^= 0xFF
    image.write_bytes(bytes(raw))
    for mode in ("light", "fast"):
        with Image.open(image, mode, verify=False) as img:  # the CRC-32 is all that checks
            fs = ImageFS(img)
            assert fs.getattr("/big")["st_size"] == len(data)
            assert fs.read("/big", 4096, 1000) == data[1000:5096]  # not at the end yet
            with pytest.raises(DamagedImage, match="CRC-32"):
                img.get_partial("big", len(data) - 10, 10)
        with Image.open(image, mode) as img:  # verified: the first read checks it all
            with pytest.raises(DamagedImage, match="CRC-32"):
                img.get_partial("big", 1000, 4096)


def test_a_size_that_lies_reads_as_eio_where_the_stream_ends(tmp_path):
    from docteur_core.mount.fs import FsError

    data = _big(4, STREAM_THRESHOLD + 100_000)
    image = tmp_path / "lie.img"
    _large_whole_image(image, data, declared=len(data) + 5000)
    with Image.open(image, "light", verify=False) as img:
        fs = ImageFS(img)
        assert fs.getattr("/big")["st_size"] == len(data) + 5000  # the header's word
        assert fs.read("/big", 100, 0) == data[:100]
        with pytest.raises(FsError) as info:
            fs.read("/big", 100, len(data) + 100)
        assert info.value.errno == errno.EIO
        assert "inflates to" in str(info.value)
    with Image.open(image, "light") as img:  # verified: no byte before the whole is checked
        fs = ImageFS(img)
        with pytest.raises(FsError) as info:
            fs.read("/big", 100, 0)
        assert info.value.errno == errno.EIO


def test_a_large_delta_encoded_file_is_built_once_for_many_reads(tmp_path):
    """Over the store's per-object cache (32 MiB): reader/partial.py keeps
    the last such object built, so reading it piece by piece builds it once."""
    from tests.helpers.forge import varint

    base = _big(6, 34 << 20)
    target = base + b"tail"
    delta = bytearray(varint(len(base)) + varint(len(target)))
    step = 8 << 20
    for at in range(0, len(base), step):  # copy ops: 4 offset bytes, 3 size bytes
        n = min(step, len(base) - at)
        delta += bytes([0x80 | 0x0F | 0x70]) + at.to_bytes(4, "little") + n.to_bytes(3, "little")
    delta += bytes([4]) + b"tail"
    b = Obj("blob", base)
    d = Obj("blob", target, ofs_base=b, delta=bytes(delta))
    t = Obj("tree", tree(("100644", "base", b.oid), ("100644", "new", d.oid)))
    c = Obj("commit", commit(t.oid))
    image = tmp_path / "delta.img"
    image.write_bytes(bytes(build([c, t, b, d], c.oid)))
    with Image.open(image, "light") as img:
        assert img.get_partial("new", len(target) - 8, 100) == target[-8:]
        built = img.store.objects_inflated
        for off in range(0, len(target), 3 << 20):
            assert img.get_partial("new", off, 4096) == target[off:off + 4096]
        assert img.store.objects_inflated == built
