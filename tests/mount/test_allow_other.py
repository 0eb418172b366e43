"""`docteur mount --allow-other`: real FUSE mounts, read by other users
(setpriv), and /etc/fuse.conf read as fusermount3 reads it, with the real
fusermount3 as the oracle. A user other than root is tried in a private
mount namespace (tests/fuse_as_user.py): the machine's /etc/fuse.conf and
/dev/fuse are never changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docteur_core.make import make_image
from docteur_core.mount.fuseconf import allow_other_refusal, allows_other
from tests.helpers.support import REPO_ROOT, wait_gone
from tests.helpers.mounts import DOCTEUR, serving_pids

pytestmark = [pytest.mark.fuse]

HELPER = Path(__file__).with_name("fuse_as_user.py")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DAEMON = ["setpriv", "--reuid=1", "--regid=1", "--clear-groups"]  # a third user
CONTENT = b"read by anyone\n"
REFUSAL = ("docteur mount: --allow-other needs a user_allow_other line in /etc/fuse.conf for a "
           "user other than root (ask an administrator), or mount without it\n")


@pytest.fixture
def open_dir():
    """A folder every user may enter (pytest's tmp_path is root's only),
    with an image readable by all: (folder, image)."""
    work = Path(tempfile.mkdtemp(prefix="docteur-allow-other-", dir="/tmp"))
    work.chmod(0o755)
    src = work / "src"
    src.mkdir()
    (src / "f").write_bytes(CONTENT)
    image = work / "a.img"
    make_image(src, image, date="2026-01-01")
    image.chmod(0o644)
    try:
        yield work, image
    finally:
        for pid in serving_pids(work / "mnt"):
            os.kill(pid, 9)
            wait_gone(pid)
        subprocess.run(["umount", "-l", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work)


def options_of(mountpoint: Path) -> list[str]:
    out = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", str(mountpoint)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(",")


def read_as(user: list[str], path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*user, "cat", str(path)], capture_output=True, timeout=60)


def test_allow_other_lets_other_users_read(open_dir, mounts):
    work, image = open_dir
    mnt = work / "mnt"
    mnt.mkdir()
    mounts.mount(image, mnt, "--allow-other")
    assert {"allow_other", "default_permissions", "ro"} <= set(options_of(mnt))
    got = read_as(NOBODY, mnt / "f")
    assert (got.returncode, got.stdout) == (0, CONTENT)
    wrote = subprocess.run([*NOBODY, "sh", "-c", f"echo x > {mnt}/new"], capture_output=True)
    assert wrote.returncode != 0
    subprocess.run([*DOCTEUR, "umount", str(mnt)], check=True, capture_output=True)
    # Without it, FUSE lets only the mounting user in: the option is what opens it.
    mounts.mount(image, mnt)
    assert "allow_other" not in options_of(mnt)
    got = read_as(NOBODY, mnt / "f")
    assert got.returncode != 0 and b"Permission denied" in got.stderr


def in_namespace(work: Path, conf: bytes, script: str, image: Path) -> subprocess.CompletedProcess:
    """`script` (sh) as root in a private mount namespace where /etc/fuse.conf
    holds `conf`; $PY, $IMG, $MNT set; NOBODY runs a command as nobody."""
    conf_file = work / "fuse.conf"
    conf_file.write_bytes(conf)
    env = dict(os.environ, PY=sys.executable, IMG=str(image), MNT=str(work / "mnt"),
               NOBODY=" ".join(NOBODY))
    return subprocess.run(["unshare", "-m", sys.executable, str(HELPER), str(work), "run",
                           str(conf_file), "--", "sh", "-c", script],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)


def _user_mountpoint(work: Path) -> None:
    (work / "mnt").mkdir()
    os.chown(work / "mnt", 65534, 65534)


@pytest.mark.parametrize("conf", [b"", b"#user_allow_other\n", b"user_allow_other",
                                  b"mount_max = 1000\n"])
def test_a_user_without_user_allow_other_is_told_in_one_line(open_dir, conf):
    work, image = open_dir
    _user_mountpoint(work)
    proc = in_namespace(work, conf, '$NOBODY "$PY" -m docteur_core mount --allow-other '
                                    '"$IMG" "$MNT"', image)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", REFUSAL)
    assert not os.path.ismount(work / "mnt")


def test_a_user_with_user_allow_other_mounts_for_everyone(open_dir):
    work, image = open_dir
    _user_mountpoint(work)
    script = """
$NOBODY "$PY" -m docteur_core mount --allow-other "$IMG" "$MNT" || exit 10
findmnt -n -o OPTIONS "$MNT"
setpriv --reuid=1 --regid=1 --clear-groups cat "$MNT/f"; status=$?
$NOBODY "$PY" -m docteur_core umount "$MNT" || exit 11
exit $status
"""
    proc = in_namespace(work, b"# ours\n  user_allow_other  # yes\n", script, image)
    assert proc.returncode == 0, proc.stderr
    options, content = proc.stdout.split("\n", 1)
    assert {"allow_other", "default_permissions", "user_id=65534"} <= set(options.split(","))
    assert content == CONTENT.decode()
    assert "docteur mount: " in proc.stderr and "Traceback" not in proc.stderr


def test_root_needs_no_fuse_conf_line(tmp_path):
    missing = tmp_path / "no-fuse.conf"
    assert allow_other_refusal(0, str(missing)) is None
    assert allow_other_refusal(1000, str(missing)) is not None
    (tmp_path / "yes.conf").write_bytes(b"user_allow_other\n")
    assert allow_other_refusal(1000, str(tmp_path / "yes.conf")) is None


def fusermount3_allows(work: Path, confs: list[bytes]) -> list[bool]:
    """For each conf, whether the real fusermount3, run as nobody, mounts
    with allow_other (its refusal must then be about user_allow_other)."""
    proc = subprocess.run(["unshare", "-m", sys.executable, str(HELPER), str(work), "oracle",
                           str(work / "mnt")],
                          input=json.dumps([c.decode("latin-1") for c in confs]),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    verdicts = []
    for status, err in json.loads(proc.stdout):
        assert status == 0 or "user_allow_other" in err, err
        verdicts.append(status == 0)
    return verdicts


TABLE = [b"user_allow_other\n", b"user_allow_other", b"  user_allow_other \t\n",
         b"user_allow_other#c\n", b"#user_allow_other\n", b"user_allow_other\r\n",
         b"x\nuser_allow_other\n", b"user_allow_otherx\n", b"user allow other\n",
         b" " * 238 + b"user_allow_other\n", b" " * 239 + b"user_allow_other\n",
         b" " * 300 + b"\nuser_allow_other\n", b"x\0y\nuser_allow_other\n",
         b"x\0y\nz\nuser_allow_other\n", b"USER_ALLOW_OTHER\n", b"\n\n\tuser_allow_other\v\n"]


@pytest.fixture
def oracle_dir():
    work = Path(tempfile.mkdtemp(prefix="docteur-fuseconf-", dir="/tmp"))
    work.chmod(0o755)
    _user_mountpoint(work)
    try:
        yield work
    finally:
        subprocess.run(["umount", "-l", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work)


def test_fuse_conf_is_read_as_fusermount3_reads_it(oracle_dir):
    assert [allows_other(c) for c in TABLE] == fusermount3_allows(oracle_dir, TABLE)
    assert allows_other(b"user_allow_other\n") and not allows_other(b"user_allow_other")


_PIECES = st.sampled_from([b"user_allow_other", b"user_allow_other", b" ", b"\t", b"#", b"x",
                           b"\r", b"\v", b"mount_max = 5", b"x\0", b" " * 120, b"\n", b"\n"])


@settings(max_examples=8, deadline=None)
@given(st.lists(st.lists(_PIECES, max_size=6).map(b"".join), min_size=1, max_size=25))
def test_generated_confs_are_read_as_fusermount3_reads_them(confs):
    work = Path(tempfile.mkdtemp(prefix="docteur-fuseconf-", dir="/tmp"))
    try:
        work.chmod(0o755)
        _user_mountpoint(work)
        assert [allows_other(c) for c in confs] == fusermount3_allows(work, confs)
    finally:
        subprocess.run(["umount", "-l", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work)
