"""Shared helpers for the test suite: real processes, no mocks.

- `NbdkitServer`: runs a real nbdkit (any plugin) on a Unix socket or a free
  TCP port on 127.0.0.1, waits until it accepts connections, and always
  kills it on exit.
- `git_reference_image`: builds an image with nothing but the `git` program
  and `docteur_core.format.layout`. It is an oracle independent of
  `docteur_core.make`, and lets reader/plugin/verify tests run on images
  that the builder did not make.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from docteur_core.format import layout

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = REPO_ROOT / "docteur_core" / "serve" / "plugin.py"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_AUTHOR_DATE": "2020-01-01T00:00:00+00:00",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_COMMITTER_DATE": "2020-01-01T00:00:00+00:00",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: str | Path | None = None, input: bytes | None = None,
        env: dict | None = None) -> bytes:
    """Run git with a fixed identity and date; return stdout; raise on failure."""
    full_env = dict(os.environ)
    full_env.update(GIT_ENV)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false", *args],
        cwd=cwd, input=input, env=full_env, check=True, capture_output=True,
    ).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NbdkitServer:
    """A real nbdkit process, e.g. `NbdkitServer("file", f"file={img}")`.

    `unix=True` serves on a Unix socket (`.socket`), else on 127.0.0.1:`.port`.
    `.uri` is the NBD URI of the default export. Use as a context manager.
    """

    def __init__(self, plugin: str | Path, *args: str, unix: bool = False,
                 extra_options: tuple[str, ...] = (), timeout: float = 30.0) -> None:
        self.plugin = str(plugin)
        self.args = list(args)
        self.unix = unix
        self.extra_options = list(extra_options)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._tmpdir: str | None = None
        self.socket: str | None = None
        self.port: int | None = None

    @property
    def uri(self) -> str:
        if self.unix:
            return f"nbd+unix:///?socket={self.socket}"
        return f"nbd://127.0.0.1:{self.port}/"

    def start(self) -> "NbdkitServer":
        cmd = ["nbdkit", "--foreground", "--exit-with-parent", *self.extra_options]
        if self.unix:
            self._tmpdir = tempfile.mkdtemp(prefix="nbdkit-")
            self.socket = os.path.join(self._tmpdir, "nbd.sock")
            cmd += ["--unix", self.socket]
        else:
            self.port = free_port()
            cmd += ["--ipaddr", "127.0.0.1", "--port", str(self.port)]
        if self.plugin.endswith(".py"):
            cmd += ["python", self.plugin]
        else:
            cmd += [self.plugin]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(
                    f"nbdkit exited with {self.proc.returncode}: {err.decode(errors='replace')}")
            if self._accepting():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nbdkit did not start listening in time")

    def _accepting(self) -> bool:
        try:
            if self.unix:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> "NbdkitServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def git_reference_pack(source: str | Path, message: str = "reference image\n",
                       ofs_delta: bool = True, index_version: str = "2"
                       ) -> tuple[str, str, bytes, bytes]:
    """(commit, tree, pack, idx) of directory `source`, made by git alone.

    `ofs_delta=False` makes git write REF_DELTA entries instead of OFS_DELTA;
    `index_version="2,N"` puts objects at offsets above N in the IDX's
    64-bit table (as git does for packs over 2 GiB).
    """
    source = Path(source).resolve()
    with tempfile.TemporaryDirectory(prefix="refimg-") as tmp:
        gitdir = Path(tmp) / "repo.git"
        git("init", "-q", "--bare", str(gitdir))
        env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(source),
               "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("add", "-A", "--force", ".", cwd=source, env=env)
        tree = git("write-tree", cwd=source, env=env).decode().strip()
        commit = git("commit-tree", tree, "-m", message.rstrip("\n"), env=env).decode().strip()
        objects = git("rev-list", "--objects", "--no-object-names", "--no-walk", commit,
                      env=env)
        base = Path(tmp) / "pack"
        delta_flag = ["--delta-base-offset"] if ofs_delta else []
        git("pack-objects", "-q", *delta_flag, "--threads=1", "--window=250", "--depth=50",
            f"--index-version={index_version}", str(base), input=objects, env=env)
        pack = next(Path(tmp).glob("pack-*.pack")).read_bytes()
        idx = next(Path(tmp).glob("pack-*.idx")).read_bytes()
    return commit, tree, pack, idx


def git_reference_image(source: str | Path, image: str | Path, block_size: int = 512,
                        message: str = "reference image\n", ofs_delta: bool = True) -> dict:
    """Build an image of directory `source` with git alone (no empty dirs).

    Returns {"commit": hex, "tree": hex, "idx_offset": int}.
    """
    commit, tree, pack, idx = git_reference_pack(source, message, ofs_delta)
    idx_offset, size = layout.image_layout(len(pack), len(idx), block_size)
    data = bytearray(size)
    data[0:layout.HEADER_SIZE] = layout.encode_header(bytes.fromhex(commit), idx_offset)
    data[layout.PACK_OFFSET:layout.PACK_OFFSET + len(pack)] = pack
    data[idx_offset:idx_offset + len(idx)] = idx
    Path(image).write_bytes(bytes(data))
    return {"commit": commit, "tree": tree, "idx_offset": idx_offset}


# -- processes and their one-line errors ------------------------------------------

def one_line(stderr: str) -> str:
    """The one non-blank line of an error output, which has no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every process whose command line can be read now."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append((int(entry), f.read().split(b"\0")))
        except OSError:  # gone meanwhile
            continue
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (one waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pid: int, patience: float = 60.0) -> bool:
    """True once `pid` is gone; False if it is still there after `patience` seconds."""
    deadline = time.monotonic() + patience
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
