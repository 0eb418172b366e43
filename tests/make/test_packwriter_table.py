"""The plain pack writer's compact table of written objects: every object once,
through the table's growth, and git accepts the pack and its .idx."""

from __future__ import annotations

import os
import subprocess

from docteur_core.format.pack import OBJ_BLOB
from docteur_core.make.packwriter import PlainPackWriter


def test_duplicates_are_written_once_across_growth(tmp_path):
    writer = PlainPackWriter(str(tmp_path / "pack-t"))
    ids = [writer.add(OBJ_BLOB, b"blob %d\n" % i) for i in range(3000)]  # grows 1024 -> 8192
    again = [writer.add(OBJ_BLOB, b"blob %d\n" % i) for i in range(0, 3000, 7)]
    assert again == ids[::7]
    assert len(writer) == 3000 and all(i in writer for i in ids)
    assert os.urandom(20) not in writer
    assert writer.finish() == 3000
    out = subprocess.run(["git", "verify-pack", "-v", str(tmp_path / "pack-t.idx")],
                         capture_output=True, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if b" blob " in line}
    assert listed == {i.hex().encode() for i in ids}
