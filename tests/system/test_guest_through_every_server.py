"""Acceptance (issue 5): "the same guest reads through the project's plugin
and through nbdkit's file plugin serving the same image".

test_guest compares the guest's output through both servers; that would
still pass if `--server file` quietly used the project's plugin too. Here
the two servers are told apart by what only one of them does: the plugin
describes the export (commit and tree) and refuses an image whose tail
padding is not zeros; nbdkit's file plugin serves any bytes. A guest booted
with server="file" on such an image must read it, and see exactly its bytes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from docteur_core.boot import runner as boot
from docteur_core.make import make_image

from tests.helpers.support import processes

pytestmark = [pytest.mark.nbdkit, pytest.mark.qemu, pytest.mark.slow]

README = b"served by nbdkit's file plugin\n"
RAW_DIGEST = ["-c", "import _sha256, sys; "
              "sys.stdout.write(_sha256.sha256(open('/dev/vda', 'rb').read()).hexdigest())"]


def processes_naming(text: str) -> list[str]:
    found = []
    for pid, argv in processes():
        cmdline = b" ".join(argv).decode(errors="replace")
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("servers")
    src = base / "src"
    (src / "docs").mkdir(parents=True)
    (src / "README.txt").write_bytes(README)
    (src / "docs" / "a.txt").write_bytes(b"a\n" * 100)
    good = base / "good.img"
    result = make_image(src, good, date="2026-01-01T00:00:00Z")
    data = bytearray(good.read_bytes())
    # The IDX's tail padding ends where the path index region starts.
    end = int.from_bytes(data[len(data) - 4096 + 100:len(data) - 4096 + 108], "little")
    assert data[len(data) - 4096:len(data) - 4088] == b"DOCTPIDX"
    assert data[end - 1] == 0
    data[end - 1] = 0x5A  # the IDX's tail padding: only the plugin's start-up check cares
    odd = base / "odd-padding.img"
    odd.write_bytes(bytes(data))
    yield {"good": good, "odd": odd, "commit": result.commit, "tree": result.tree, "base": base}
    assert processes_naming(str(base)) == []


def test_server_kinds_are_what_they_say(images):
    described = {}
    for kind in ("docteur", "file"):
        with boot.image_server(images["good"], kind) as server:
            info = json.loads(subprocess.run(["nbdinfo", "--json", server.uri], check=True,
                                             capture_output=True, text=True).stdout)
        export = info["exports"][0]
        assert export["export-size"] == images["good"].stat().st_size
        assert export["is_read_only"] is True
        described[kind] = export.get("description", "")
    assert images["commit"] in described["docteur"] and images["tree"] in described["docteur"]
    assert images["commit"] not in described["file"]


def test_the_plugin_refuses_what_the_file_plugin_serves(images):
    with pytest.raises(boot.BootError, match="nbdkit could not serve .*padding: padding is not zero"):
        boot.boot(images["odd"], [boot.reader_command(["ls"])], server="docteur", timeout=60)
    assert processes_naming(str(images["odd"])) == []


def test_a_guest_booted_with_the_file_server_reads_the_file_plugins_export(images):
    result = boot.boot(images["odd"], [RAW_DIGEST, boot.reader_command(["cat", "README.txt"])],
                       server="file", timeout=400)
    raw, cat = result.results
    assert (raw.status, raw.stderr) == (0, b"")
    assert raw.stdout.decode() == hashlib.sha256(images["odd"].read_bytes()).hexdigest()
    assert (cat.status, cat.stdout, cat.stderr) == (0, README, b"")
    assert processes_naming(str(images["odd"])) == []
