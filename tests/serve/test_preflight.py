"""`docteur serve` checks what it can before it checks the image and starts
nbdkit: the pidfile's folder, the Unix socket's folder, the TCP port, the
cache's folder. `--pidfile /no/such/dir/x.pid` was two minutes of silence
(the daemon could not write its pid, and serve waited for it), then an
error; now one line at once, and no nbdkit is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.make import make_image
from tests.helpers.support import REPO_ROOT, free_port, one_line
from tests.helpers.gitoracle import SITE
from tests.helpers.serving import nbdkits_of

pytestmark = [pytest.mark.nbdkit]


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "preflight.img"
    make_image(SITE, path, date="2026-01-01T00:00:00Z")
    return path


def serve(image: Path, *options, env: dict | None = None,
          as_user: bool = False) -> subprocess.CompletedProcess:
    """`docteur serve OPTIONS IMAGE`, which must answer within 30 s (the
    refusals are immediate); any nbdkit it left on `image` is stopped."""
    argv = [sys.executable, "-m", "docteur_core", "serve", *map(str, options), str(image)]
    if as_user and os.geteuid() == 0:  # root without its power to write anywhere
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    finally:
        for pid in nbdkits_of(image):
            os.kill(pid, signal.SIGTERM)


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1 and proc.stdout == "", proc
    line = one_line(proc.stderr)
    assert line.startswith("docteur serve: "), line
    for word in words:
        assert word in line, line


def test_a_pidfile_in_a_missing_folder(image):
    refused(serve(image, "--port", free_port(), "--pidfile", "/no/such/dir/x.pid"),
            "--pidfile /no/such/dir/x.pid: no such folder /no/such/dir")


def test_a_pidfile_in_a_folder_it_may_not_write(image, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    refused(serve(image, "--port", free_port(), "--pidfile", locked / "x.pid", as_user=True),
            f"the folder {locked} is not writable")


def test_a_pidfile_that_is_a_folder(image, tmp_path):
    refused(serve(image, "--port", free_port(), "--pidfile", tmp_path),
            f"--pidfile {tmp_path}: a folder")


def test_a_socket_in_a_missing_folder(image, tmp_path):
    refused(serve(image, "--unix", tmp_path / "none" / "nbd.sock"),
            f"no such folder {tmp_path / 'none'}")


def test_a_taken_port_is_named_before_the_image_is_checked(image):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(serve(image, "--port", port, "--verify", "full"),
                f"127.0.0.1 port {port} is already in use")


def test_an_address_this_machine_does_not_have(image):
    refused(serve(image, "--ip", "192.0.2.1", "--port", free_port()),
            "cannot listen on 192.0.2.1 port", "Cannot assign requested address")


def test_a_missing_cache_folder(tmp_path):
    """Only a URL is served through nbdkit's cache filter (an image file is
    read by nbdkit's file plugin): its folder is checked before the origin
    is asked anything (nobody listens on port 9)."""
    refused(serve("http://127.0.0.1:9/disk.img", "--port", free_port(),
                  env={"TMPDIR": str(tmp_path / "gone")}),
            f"$TMPDIR, {tmp_path / 'gone'}: no such folder")
