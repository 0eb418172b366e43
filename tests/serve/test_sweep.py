"""`docteur serve --foreground` killed with SIGKILL leaves its
`$TMPDIR/docteur-nbdkit-PID-*` folder behind: the next `docteur serve`
removes it, and only it (never a live server's folder, never one whose
server cannot be proven gone, never one docteur did not make). Real
servers (nbdkit, the docteur plugin), each test in its own TMPDIR so that
nothing else on the machine is looked at.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.forge import Obj, build, simple
from tests.helpers.support import alive, wait_gone

pytestmark = [pytest.mark.nbdkit]

DOCTEUR = [sys.executable, "-m", "docteur_core"]
# A deadline against hangs only: nothing is asserted about how long things take.
PATIENCE = 60.0


class Served:
    """`docteur serve --foreground --unix SOCKET IMAGE` with TMPDIR=`tmpdir`,
    in its own session (as a shell's job), started once it prints its URI."""

    def __init__(self, image: Path, sock: Path, tmpdir: Path) -> None:
        self.uri = f"nbd+unix:///?socket={sock}"
        self.pidfile = sock.with_suffix(".pid")
        self.proc = subprocess.Popen(
            [*DOCTEUR, "serve", "--foreground", "--no-cache", "--unix", str(sock), "--pidfile",
             str(self.pidfile), str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "TMPDIR": str(tmpdir)}, start_new_session=True)
        line = self.proc.stdout.readline()  # printed once nbdkit listens
        if not line:
            self.proc.wait(timeout=PATIENCE)
            raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
        assert line == self.uri + "\n"
        self.nbdkit = int(self.pidfile.read_text())
        assert alive(self.nbdkit)

    def stop(self) -> int:
        """Stop it as Ctrl-C does; its exit status."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.communicate(timeout=PATIENCE)
        return self.proc.returncode

    def kill(self) -> None:
        """What a test's failure leaves: nothing running."""
        for pid in (self.proc.pid, self.nbdkit):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate(timeout=PATIENCE)


def folders(tmpdir: Path) -> set[Path]:
    return set(tmpdir.glob("docteur-nbdkit-*"))


@pytest.fixture
def image(tmp_path) -> Path:
    objs, cid = simple({"f": Obj("blob", b"f\n")})
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(build(objs, cid)))
    return path


def killed(image: Path, sock: Path, tmpdir: Path) -> Path:
    """The folder a foreground server leaves when it and its nbdkit are
    killed with SIGKILL (neither can clean up)."""
    before = folders(tmpdir)
    server = Served(image, sock, tmpdir)
    try:
        (folder,) = folders(tmpdir) - before
        os.kill(server.proc.pid, signal.SIGKILL)
        os.kill(server.nbdkit, signal.SIGKILL)
        server.proc.communicate(timeout=PATIENCE)
        assert wait_gone(server.nbdkit)
    finally:
        server.kill()
    assert folder.is_dir()  # what the kill left behind
    return folder


def test_a_killed_servers_folder_is_swept_by_the_next_serve(image, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # What must stay: an older version's folder (no pid: nothing tells
    # whether its server lives), a folder named by a live pid (this one's,
    # never locked), another program's file and folder.
    for name in ("docteur-nbdkit-abcd1234", f"docteur-nbdkit-{os.getpid()}-unlocked",
                 "docteur-nbdkit-other"):
        (tmpdir / name).mkdir()
        (tmpdir / name / "keep").write_text("kept\n")
    (tmpdir / "docteur-nbdkit-1-file").write_text("not a folder\n")
    decoys = folders(tmpdir)
    servers = []
    try:
        live = Served(image, tmp_path / "live.sock", tmpdir)
        servers.append(live)
        (live_folder,) = folders(tmpdir) - decoys
        stale = killed(image, tmp_path / "killed.sock", tmpdir)
        after = Served(image, tmp_path / "after.sock", tmpdir)
        servers.append(after)
        (after_folder,) = folders(tmpdir) - decoys - {stale, live_folder}
        assert not stale.exists()
        assert live_folder.is_dir() and after_folder.is_dir()
        assert decoys <= folders(tmpdir)
        # The live ones still serve, and clean up after themselves.
        for server in (live, after):
            got = subprocess.run([*DOCTEUR, "cat", server.uri, "f"], capture_output=True,
                                 timeout=PATIENCE)
            assert got.returncode == 0 and got.stdout == b"f\n", got.stderr
            assert server.stop() == 0
        assert folders(tmpdir) == decoys
        assert all((d / "keep").read_text() == "kept\n" for d in decoys if d.is_dir())
    finally:
        for server in servers:
            server.kill()


def test_a_background_serve_sweeps_too(image, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    stale = killed(image, tmp_path / "killed.sock", tmpdir)
    pidfile = tmp_path / "daemon.pid"
    proc = subprocess.run([*DOCTEUR, "serve", "--unix", str(tmp_path / "daemon.sock"),
                           "--pidfile", str(pidfile), str(image)], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(tmpdir)}, timeout=PATIENCE)
    try:
        assert proc.returncode == 0, proc.stderr
        assert not stale.exists() and folders(tmpdir) == set()
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# A server's owner killed while a process it started (nbdkit) lives on: the
# kernel kills nbdkit with docteur (PR_SET_PDEATHSIG), so `sleep` plays it.
ORPHAN = """
import os, signal, subprocess, sys
from docteur_core.serve.workdir import WorkFolder
folder = WorkFolder(sys.argv[1])
child = subprocess.Popen(["sleep", "600"], pass_fds=(folder.lock_fd,), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(folder.name, child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_folder_is_live_while_any_process_holding_its_lock_lives(tmp_path):
    """The lock is inherited by the processes the server starts: its owner
    killed, the folder stays while one of them lives, and goes after."""
    from docteur_core.serve.workdir import sweep

    owner = subprocess.run([sys.executable, "-c", ORPHAN, str(tmp_path)], capture_output=True,
                           text=True, timeout=PATIENCE)
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    name, pid = owner.stdout.split()
    try:
        assert sweep(str(tmp_path)) == [] and Path(name).is_dir()
    finally:
        os.kill(int(pid), signal.SIGKILL)
    assert wait_gone(int(pid))
    assert sweep(str(tmp_path)) == [name] and not Path(name).exists()
