"""Fixtures of the serving tests: background servers cleaned up, images to serve."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.plugin_support import make_source
from tests.helpers.serving import cmdline
from tests.helpers.support import alive, git_reference_image


@pytest.fixture
def daemons():
    """Pidfiles of background servers: whatever they name is killed at the end."""
    pidfiles: list[Path] = []
    yield pidfiles
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if alive(pid) and ("nbdkit" in cmdline(pid)[0] or "docteur_core" in cmdline(pid)):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two valid images of different trees (git-only builds)."""
    base = tmp_path_factory.mktemp("serve")
    out = {}
    for name, seed in (("one", 1), ("two", 2)):
        src = make_source(base / f"src-{name}", seed=seed, big=200_000)
        image = base / f"{name}.img"
        info = git_reference_image(src, image)
        out[name] = {"image": image, "src": src, "commit": info["commit"],
                     "tree": info["tree"], "data": image.read_bytes()}
    return out
