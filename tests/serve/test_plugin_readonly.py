"""Acceptance (issue 4): "the image file is opened read-only so no bug can change it".

test_plugin checks that writes are refused over NBD; that holds even if the
plugin held the file open for writing (nbdkit refuses writes when the
plugin has no pwrite). This looks at the running nbdkit itself: every
descriptor it holds on the image, while a client is connected, must have
been opened O_RDONLY (from /proc/PID/fdinfo, the kernel's own record).
"""

from __future__ import annotations

import pytest
import os
from pathlib import Path

from docteur_core.make import make_image
from docteur_core.reader import Image
from tests.helpers.plugin_support import make_source, unix_uri
from tests.helpers.support import PLUGIN, NbdkitServer

pytestmark = [pytest.mark.nbdkit]

DATE = "2026-01-01T00:00:00Z"


def image_descriptors(pid: int, image: Path) -> list[int]:
    """The open-file flags of each descriptor `pid` holds on `image`."""
    target = os.path.realpath(image)
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except FileNotFoundError:  # closed meanwhile
            continue
        flags.append(int(fields["flags"].strip(), 8))
    return flags


def test_the_plugin_holds_the_image_read_only(tmp_path):
    src = make_source(tmp_path / "src", big=20_000)
    image = tmp_path / "disk.img"
    make_image(src, image, date=DATE)
    with NbdkitServer(PLUGIN, f"image={image}", unix=True) as server:
        with Image.open(server.uri) as opened:
            assert opened.list("")  # a connection is open and has read
            flags = image_descriptors(server.proc.pid, image)
    assert flags, "nbdkit holds no descriptor on the image while serving it"
    assert all(f & os.O_ACCMODE == os.O_RDONLY for f in flags), [oct(f) for f in flags]


def test_dir_exports_are_held_read_only_too(tmp_path):
    src = make_source(tmp_path / "src", big=20_000)
    folder = tmp_path / "images"
    folder.mkdir()
    make_image(src, folder / "one.img", date=DATE)
    with NbdkitServer(PLUGIN, f"dir={folder}", unix=True) as server:
        with Image.open(unix_uri(server.socket, "one")) as opened:
            assert opened.list("")
            flags = image_descriptors(server.proc.pid, folder / "one.img")
    assert flags, "nbdkit holds no descriptor on the image while serving it"
    assert all(f & os.O_ACCMODE == os.O_RDONLY for f in flags), [oct(f) for f in flags]
