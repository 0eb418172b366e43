"""The builder under attack (issue 13, items 9-12): no escapes, no damage, nothing stranded.

- a file swapped between the scan and the read (for a symbolic link out of
  SOURCE, a FIFO, another file, a parent folder for a link) stops the build
  with one line, never reads the swapped-in file, never blocks;
- an IMAGE that exists and is not a regular file is refused and left as it was;
- a file over the readers' object size limit is refused before any work;
- a build killed with SIGKILL while hashing, packing, fetching over ssh or
  writing takes its child processes with it, and the next build sweeps
  what it left.

Swaps are real (rename, symlink, mkfifo on the disk) and so are opens and
kills; only the moment is chosen by the test: `Snapshot.scan()` and
`Snapshot.write()` are run apart, or the build stops itself (SIGSTOP) from
its own progress callback, or a git/ssh wrapper stops itself before it
runs, so each race is hit every time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from docteur_core.make import make_image
from docteur_core.format.pack import object_id
from docteur_core.make.packwriter import PlainPackWriter
from docteur_core.make.scratch import sweep
from docteur_core.make.snapshot import Snapshot
from docteur_core.errors import BuildError
from docteur_core.format.limits import MAX_FILE_SIZE
from tests.helpers.support import REPO_ROOT, git

DATE = "2026-01-01T00:00:00Z"
SECRET = b"outside SOURCE: must never be read into an image\n"


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", "make", "--date", DATE, *args],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("docteur make: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


# --- 9. a file swapped between the scan and the read ----------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a\n")
    (src / "d" / "f.txt").write_bytes(b"f\n")
    (src / "z.txt").write_bytes(b"z\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "f.txt").write_bytes(SECRET)
    return src


def scanned(src: Path) -> Snapshot:
    snapshot = Snapshot(str(src), warn=lambda text: None)
    snapshot.scan()
    return snapshot


def write_fails(snapshot: Snapshot, tmp_path: Path) -> tuple[str, PlainPackWriter]:
    """write() must refuse; returns its message and the writer (secret must not be in it)."""
    writer = PlainPackWriter(str(tmp_path / "pack-test"))

    def hung(signum, frame):
        raise AssertionError("the build blocked on the swapped file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a guard against a hang, not a timing threshold
    try:
        with pytest.raises(BuildError) as caught:
            snapshot.write(writer)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    writer.abort()
    message = str(caught.value)
    assert "\n" not in message
    assert object_id("blob", SECRET) not in writer
    return message, writer


def test_scan_then_write_builds_what_was_scanned(tree, tmp_path):
    """The split itself: nothing changed, the tree is git's."""
    snapshot = scanned(tree)
    writer = PlainPackWriter(str(tmp_path / "pack-test"))
    sha = snapshot.write(writer)
    writer.abort()
    git("init", "-q", cwd=tree)
    git("add", "-A", cwd=tree)
    assert sha == git("write-tree", cwd=tree).decode().strip()


def test_file_swapped_for_a_link_outside_source(tree, tmp_path):
    snapshot = scanned(tree)
    (tree / "d" / "f.txt").unlink()
    (tree / "d" / "f.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/d/f.txt: changed while the build read SOURCE (it is now a "
                       "symbolic link); nothing was written")


def test_file_swapped_for_a_fifo_does_not_block(tree, tmp_path):
    snapshot = scanned(tree)
    (tree / "a.txt").unlink()
    os.mkfifo(tree / "a.txt")  # no writer will ever come: a blocking open would hang
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/a.txt: changed while the build read SOURCE (it is now a "
                       "FIFO); nothing was written")


def test_folder_swapped_for_a_link_outside_source(tree, tmp_path):
    """O_NOFOLLOW guards the last component only; the identity check guards the rest."""
    snapshot = scanned(tree)
    (tree / "d").rename(tmp_path / "d-moved")
    (tree / "d").symlink_to(tmp_path / "outside")  # holds an f.txt too
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/d/f.txt: changed while the build read SOURCE (it was "
                       "replaced by another file); nothing was written")


def test_file_replaced_by_another_file(tree, tmp_path):
    snapshot = scanned(tree)
    shutil.copy(tmp_path / "outside" / "secret.txt", tmp_path / "new")
    os.replace(tmp_path / "new", tree / "z.txt")
    message, _ = write_fails(snapshot, tmp_path)
    assert "z.txt: changed while the build read SOURCE (it was replaced by another file)" \
        in message


def test_file_removed(tree, tmp_path):
    snapshot = scanned(tree)
    (tree / "z.txt").unlink()
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/z.txt: changed while the build read SOURCE (it is gone); "
                       "nothing was written")


def test_file_swapped_for_a_device(tree, tmp_path):
    """A character device (as root: a copy of /dev/null's node in SOURCE)."""
    snapshot = scanned(tree)
    (tree / "a.txt").unlink()
    if os.geteuid() == 0:
        os.mknod(tree / "a.txt", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:  # a user cannot make nodes; a link is what they can do (refused as above)
        (tree / "a.txt").symlink_to("/dev/null")
    message, _ = write_fails(snapshot, tmp_path)
    assert message.startswith(f"{tree}/a.txt: changed while the build read SOURCE (it is now a ")


def test_folder_swapped_during_the_scan(tree, tmp_path):
    """The scan opens each folder it lists the same way: a swap between listing and opening."""
    snapshot = Snapshot(str(tree), warn=lambda text: None)
    listed = snapshot._children  # run the real method, swap right after the root is listed

    def children(path, st, follow):
        entries = list(listed(path, st, follow))
        if path == os.fsencode(tree):
            (tree / "d").rename(tmp_path / "d-moved")
            (tree / "d").symlink_to(tmp_path / "outside")
        yield from entries

    snapshot._children = children
    with pytest.raises(BuildError) as caught:
        snapshot.scan()
    assert str(caught.value) == (f"{tree}/d: changed while the build read SOURCE (is no longer "
                                 "a folder); nothing was written")


def test_file_grown_over_the_limit_after_the_scan(tree, tmp_path):
    snapshot = Snapshot(str(tree), warn=lambda text: None, max_object_size=100)
    snapshot.scan()
    with open(tree / "a.txt", "ab") as f:
        f.write(b"x" * 200)
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/a.txt: 202 bytes, over the object size limit of 100 bytes "
                       "(the largest file docteur stores)")


def test_compat_link_retargeted_outside_after_the_scan(tree, tmp_path):
    """--compat ocaml follows links (checked inside SOURCE at the scan): the identity check
    catches a link pointed elsewhere afterwards."""
    (tree / "link").symlink_to("a.txt")
    snapshot = Snapshot(str(tree), warn=lambda text: None, compat="ocaml")
    snapshot.scan()
    (tree / "link").unlink()
    (tree / "link").symlink_to(tmp_path / "outside" / "secret.txt")
    message, _ = write_fails(snapshot, tmp_path)
    assert message == (f"{tree}/link: changed while the build read SOURCE (it was replaced by "
                       "another file); nothing was written")


# --- 10. IMAGE that is not a regular file ----------------------------------------------------


@pytest.fixture
def site(tmp_path) -> Path:
    src = tmp_path / "site"
    src.mkdir()
    (src / "index.html").write_text("hello\n")
    return src


def test_image_fifo_refused(site, tmp_path):
    image = tmp_path / "fifo"
    os.mkfifo(image)
    proc = make(str(site), str(image))
    assert one_line_error(proc) == (f"docteur make: {image}: is a FIFO; docteur make writes "
                                    "(and replaces) regular files only\n")
    assert stat.S_ISFIFO(os.lstat(image).st_mode)


def test_image_character_device_refused(site, tmp_path):
    """As root a /dev/null node made in a temporary folder; otherwise /dev/null itself
    (a user could not replace it anyway)."""
    if os.geteuid() == 0:
        image = tmp_path / "null"
        os.mknod(image, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        image = Path("/dev/null")
    before = os.lstat(image)
    proc = make(str(site), str(image))
    assert one_line_error(proc) == (f"docteur make: {image}: is a character device; docteur "
                                    "make writes (and replaces) regular files only\n")
    after = os.lstat(image)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino
    assert [p.name for p in image.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_image_socket_refused(site, tmp_path):
    image = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(image))
        proc = make(str(site), str(image))
    assert one_line_error(proc) == (f"docteur make: {image}: is a socket; docteur make writes "
                                    "(and replaces) regular files only\n")
    assert stat.S_ISSOCK(os.lstat(image).st_mode)


@pytest.mark.parametrize("dangling", [False, True])
def test_image_symlink_refused(site, tmp_path, dangling):
    """Neither written through (to the link's target) nor replaced by a file."""
    target = tmp_path / "target.img"
    if not dangling:
        target.write_bytes(b"the link's target, untouched\n")
    image = tmp_path / "link.img"
    image.symlink_to(target)
    proc = make(str(site), str(image))
    assert one_line_error(proc) == (f"docteur make: {image}: is a symbolic link (to {target}); "
                                    "docteur make writes regular files only: give the path to "
                                    "write, or remove the link\n")
    assert os.readlink(image) == str(target)
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"the link's target, untouched\n"
    # The target's own path is written as any file.
    proc = make("-q", str(site), str(target))
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes()[:20] != b"the link's target, u"


def test_image_swapped_for_a_fifo_during_the_write(site, tmp_path):
    """IMAGE is checked again just before the rename over it."""
    image = tmp_path / "disk.img"
    swapped = []

    def progress(text: str) -> None:
        if text.startswith("Writing image") and not swapped:
            os.mkfifo(image)
            swapped.append(text)

    with pytest.raises(BuildError) as caught:
        make_image(site, image, date=DATE, progress=progress)
    assert swapped
    assert str(caught.value) == (f"{image}: is a FIFO; docteur make writes (and replaces) "
                                 "regular files only")
    assert stat.S_ISFIFO(os.lstat(image).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- 11. the readers' object size limit --------------------------------------------------------


def test_file_over_the_readers_limit_refused_before_any_work(tmp_path):
    """A sparse file one byte over the limit: refused by the scan, nothing read or written."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"small\n")
    with open(src / "huge", "wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    image = tmp_path / "disk.img"
    proc = make(str(src), str(image), env={"TMPDIR": str(scratch)})
    assert one_line_error(proc) == (
        f"docteur make: {src}/huge: {MAX_FILE_SIZE + 1} bytes, over the object size "
        f"limit of {MAX_FILE_SIZE} bytes (the largest file docteur stores)\n")
    assert list(scratch.iterdir()) == []  # not even a scratch folder: no work at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tmp"]


def test_limit_boundary_for_a_directory(tmp_path):
    """At the limit builds, one byte over is refused (the readers refuse size > limit)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    make_image(src, tmp_path / "ok.img", date=DATE, max_object_size=1000)
    (src / "f").write_bytes(b"x" * 1001)
    with pytest.raises(BuildError) as caught:
        make_image(src, tmp_path / "no.img", date=DATE, max_object_size=1000)
    assert str(caught.value) == (f"{src}/f: 1001 bytes, over the object size limit of 1000 "
                                 "bytes (the largest file docteur stores)")
    assert not (tmp_path / "no.img").exists()


def test_limit_for_a_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    git("init", "-q", cwd=repo)
    (repo / "sub" / "big.bin").write_bytes(b"y" * 1001)
    (repo / "small").write_bytes(b"s\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "x", cwd=repo)
    make_image(repo, tmp_path / "ok.img", max_object_size=1001)
    with pytest.raises(BuildError) as caught:
        make_image(repo, tmp_path / "no.img", max_object_size=1000)
    assert str(caught.value) == (f"{repo}: sub/big.bin: 1001 bytes, over the object size limit "
                                 "of 1000 bytes (the largest file docteur stores)")
    with pytest.raises(BuildError) as caught:
        make_image(repo, tmp_path / "no.img", max_object_size=100)
    assert str(caught.value).startswith(f"{repo}: commit ")  # the commit itself is over 100
    assert str(caught.value).endswith(" bytes, over the object size limit of 100 bytes (the "
                                      "largest file docteur stores)")
    assert not (tmp_path / "no.img").exists()


# --- 12. a killed build strands nothing ------------------------------------------------------

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from docteur_core.make import make_image
    source, image, stop_at = sys.argv[1:4]
    def progress(text):
        if stop_at and text.startswith(stop_at):
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen here until the test kills it
    make_image(source, image, date="2026-01-01T00:00:00Z", progress=progress)
""")

# Stops itself before running the real git for `pack-objects` (so the test finds it alive);
# PR_SET_PDEATHSIG, set before this script runs, survives its exec of git.
GIT_WRAPPER = textwrap.dedent("""\
    #!/bin/sh
    for arg in "$@"; do
        if [ "$arg" = pack-objects ]; then kill -STOP $$; fi
    done
    exec {git} "$@"
""")

SSH_WRAPPER = "#!/bin/sh\nkill -STOP $$\nexit 1\n"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None and info[1] == pid:
                found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _poll(condition, what: str, limit: float = 120.0):
    """Wait for `condition()` to be true (a bounded wait, not a timing measure)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def _gone(pid: int) -> bool:
    info = _stat(pid)
    return info is None or info[0] in ("Z", "X")  # a zombie has stopped running


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    return {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(REPO_ROOT)}


def kill_build(source, image: Path, stop_at: str, env: dict,
               stopped_child: bytes | None = None) -> list[int]:
    """Start a real build, wait until it stops at `stop_at` (or until a child whose command
    line holds `stopped_child` stops itself), SIGKILL it; return the child processes it had,
    once all are gone."""
    builder = subprocess.Popen([sys.executable, "-c", DRIVER, str(source), str(image), stop_at],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kids: list[int] = []
    try:
        if stopped_child is None:
            _poll(lambda: (_stat(builder.pid) or ("?",))[0] == "T" or builder.poll() is not None,
                  f"the build to reach {stop_at!r}")
        else:
            def child_stopped():
                return builder.poll() is not None or any(
                    stopped_child in _cmdline(c) and (_stat(c) or ("?",))[0] == "T"
                    for c in _descendants(builder.pid))
            _poll(child_stopped, f"a stopped {stopped_child!r} child")
        assert builder.poll() is None, builder.communicate()
        kids = _descendants(builder.pid)
        builder.kill()
        builder.communicate()
        _poll(lambda: all(_gone(k) for k in kids), f"the build's children {kids} to die")
    finally:
        builder.kill()
        builder.wait()
        for k in kids:  # only when the test failed: leave nothing behind either
            if not _gone(k):
                os.kill(k, signal.SIGKILL)
    return kids


def scratch_folders(env: dict) -> list[str]:
    return sorted(p for p in os.listdir(env["TMPDIR"]) if p.startswith("docteur-make-"))


def test_killed_while_hashing_then_swept(site, tmp_path, env):
    for i in range(50):
        (site / f"f{i}").write_bytes(os.urandom(1000))
    image = tmp_path / "disk.img"
    kill_build(site, image, "Hashing files", env)
    left = scratch_folders(env)
    assert len(left) == 1 and left[0].startswith("docteur-make-")
    assert not image.exists()
    proc = make("-q", str(site), str(image), env=env)
    assert proc.returncode == 0, proc.stderr
    assert scratch_folders(env) == []
    assert image.exists()


def test_killed_during_pack_objects(site, tmp_path, env):
    """git pack-objects (and rev-list) die with the builder, then the next build sweeps."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "git").write_text(GIT_WRAPPER.format(git=shutil.which("git")))
    (wrappers / "git").chmod(0o755)
    image = tmp_path / "disk.img"
    kids = kill_build(site, image, "", {**env, "PATH": f"{wrappers}:{env['PATH']}"},
                      stopped_child=b"pack-objects")
    assert kids  # the stopped pack-objects was among them, and it is gone
    assert len(scratch_folders(env)) == 1
    proc = make("-q", str(site), str(image), env=env)
    assert proc.returncode == 0, proc.stderr
    assert scratch_folders(env) == []


def test_killed_while_fetching_over_ssh(tmp_path, env):
    """The ssh program dies with the builder."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(SSH_WRAPPER)
    fake_ssh.chmod(0o755)
    kids = kill_build("ssh://example.invalid/repo.git", tmp_path / "disk.img", "",
                      {**env, "GIT_SSH_COMMAND": str(fake_ssh)}, stopped_child=b"fake-ssh")
    assert kids


def test_killed_while_writing_then_swept(site, tmp_path, env):
    """The old image is untouched; the next build sweeps the temporary image beside it."""
    (site / "big").write_bytes(os.urandom(3 << 20))  # several progress steps
    image = tmp_path / "out" / "disk.img"
    image.parent.mkdir()
    image.write_bytes(b"old image\n")
    kill_build(site, image, "Writing image", env)
    assert image.read_bytes() == b"old image\n"
    left = [p.name for p in image.parent.iterdir() if p.name != "disk.img"]
    assert len(left) == 1 and left[0].startswith(".disk.img.docteur-") and \
        left[0].endswith(".tmp"), left
    proc = make("-q", str(site), str(image), env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in image.parent.iterdir()] == ["disk.img"]
    assert image.read_bytes() != b"old image\n"
    assert scratch_folders(env) == []


def test_sweep_spares_live_builds(tmp_path):
    """Only entries whose pid is dead and whose lock is free are removed."""
    import fcntl

    sleeper = subprocess.Popen(["sleep", "600"])
    done = subprocess.Popen(["true"])
    done.wait()
    try:
        alive = tmp_path / f"docteur-make-{sleeper.pid}-alive"
        dead = tmp_path / f"docteur-make-{done.pid}-dead"
        locked = tmp_path / f"docteur-make-{done.pid}-locked"  # pid dead or in another namespace
        for d in (alive, dead, locked):
            d.mkdir()
            (d / "data").write_bytes(b"x")
        (tmp_path / "docteur-make-oldstyle").mkdir()  # no pid: left alone
        link = tmp_path / f"docteur-make-{done.pid}-link"
        link.symlink_to(alive)  # never followed
        fd = os.open(locked, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            assert sweep(str(tmp_path)) == [str(dead)]
        finally:
            os.close(fd)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [alive.name, locked.name, "docteur-make-oldstyle", link.name])
    finally:
        sleeper.kill()
        sleeper.wait()
