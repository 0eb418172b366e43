"""The nbdkit plugin serving images: real nbdkit, real clients (nbdcopy,
nbdinfo, nbdsh, libnbd, the project's own NBD reader)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.format import layout
from docteur_core.make import make_image
from docteur_core.blockdev.block import MemoryDevice
from docteur_core.serve import imagecheck
from tests.helpers.support import PLUGIN, NbdkitServer, git_reference_image
from tests.helpers.plugin_support import (
    CONCURRENT_READS, HOLD_OPEN, LIST_EXPORTS, NBDSH, SYSTEM_PYTHON, WRITES, libnbd, make_source,
    unix_uri,
)

pytestmark = [pytest.mark.nbdkit]

DATE = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "site")


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    image = tmp_path_factory.mktemp("img") / "built.img"
    result = make_image(tree, image, date=DATE, block_size=4096)
    return image, result.commit, result.tree


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    image = tmp_path_factory.mktemp("img") / "ref.img"
    r = git_reference_image(tree, image)
    return image, r["commit"], r["tree"]


@pytest.fixture(scope="module")
def served(built):
    with NbdkitServer(PLUGIN, f"image={built[0]}", unix=True) as server:
        yield server


def nbdcopy_to_bytes(uri: str, tmp_path: Path) -> bytes:
    out = tmp_path / "copy.img"
    subprocess.run(["nbdcopy", uri, str(out)], check=True, capture_output=True)
    data = out.read_bytes()
    out.unlink()
    return data


def nbdinfo_json(uri: str, *extra: str) -> dict:
    return json.loads(subprocess.run(["nbdinfo", "--json", *extra, uri], check=True,
                                     capture_output=True, text=True).stdout)


@pytest.mark.parametrize("which", ["built", "reference"])
def test_whole_export_equals_image(which, request, tmp_path):
    image, _, _ = request.getfixturevalue(which)
    with NbdkitServer(PLUGIN, f"image={image}", unix=True) as server:
        assert nbdcopy_to_bytes(server.uri, tmp_path) == image.read_bytes()


def test_nbdinfo_shows_commit_tree_and_read_only_flags(served, built):
    _, commit, tree = built
    info = nbdinfo_json(served.uri)
    export = info["exports"][0]
    assert export["description"] == f"docteur image: commit {commit} tree {tree}"
    assert export["is_read_only"] is True
    assert export["can_multi_conn"] is True
    assert export["is_rotational"] is False
    assert export["can_cache"] is True
    assert export["can_trim"] is False and export["can_zero"] is False
    assert export["can_flush"] is False and export["can_fua"] is False
    assert export["block_size_minimum"] == 512
    assert export["block_size_preferred"] == 4096
    assert export["block_size_maximum"] == 32 * 1024 * 1024
    assert export["export-size"] == built[0].stat().st_size


def test_extents_report_the_padding_as_zero(served, built):
    image = built[0]
    data = image.read_bytes()
    header = layout.parse_header(data[:layout.HEADER_SIZE])
    extents = nbdinfo_json(served.uri, "--map")
    assert extents[0]["offset"] == 0
    end = 0
    for e in extents:
        assert e["offset"] == end and e["length"] % 512 == 0
        end += e["length"]
        chunk = data[e["offset"]:e["offset"] + e["length"]]
        if e["type"] & 2:  # zero
            assert chunk == bytes(len(chunk))
    assert end == len(data)
    zero = [(e["offset"], e["offset"] + e["length"]) for e in extents if e["type"] == 3]
    # Two padding regions: the one that ends at the IDX, and the tail, which
    # ends at the path index's pages (its own leading padding is zeros too).
    assert any(stop == header.idx_offset for _, stop in zero)
    from docteur_core.format import pathindex as pix
    assert pix.has_magic(data[-pix.SUPER_SIZE:])
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    # The padding's whole sectors: the pages start anywhere in the last one.
    assert zero[-1][1] == sup.nodes_start // 512 * 512
    assert extents[-1]["offset"] + extents[-1]["length"] == len(data)
    assert extents[-1]["type"] == 0 and extents[-1]["offset"] <= sup.nodes_start
    # Everything but zeros is reported as data: the pack and the IDX.
    data_bytes = sum(e["length"] for e in extents if e["type"] == 0)
    assert data_bytes < len(data)


def test_cache_requests_succeed(served):
    subprocess.run([*NBDSH, "-u", served.uri, "-c",
                    "h.cache(h.get_size(), 0); print(h.pread(512, 0)[:4])"],
                   check=True, capture_output=True)


def test_writes_are_refused_and_the_file_is_unchanged(served, built):
    image = built[0]
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    proc = subprocess.run([*NBDSH, "-u", served.uri, "-c", "h.pwrite(b'X' * 512, 0)"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "nbd_pwrite" in proc.stderr, proc.stderr
    result = libnbd(WRITES, {"uri": served.uri})
    assert result["read_only"] is True
    for key, value in result.items():
        if key == "read_only":
            continue
        assert value != "accepted", key
    # With the client's own checks off the request reaches the server,
    # which refuses it with EPERM or EROFS.
    for op in ("pwrite", "zero", "trim"):
        assert result[f"{op}_False"][0] in ("EPERM", "EROFS"), result
        assert "command failed" in result[f"{op}_False"][1], result
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_concurrent_connections_read_random_ranges(served, built, data):
    image = built[0]
    size = image.stat().st_size
    sectors = size // 512
    ranges = data.draw(st.lists(
        st.tuples(st.integers(0, sectors - 1), st.integers(1, 64)), min_size=1, max_size=60))
    ranges = [(s * 512, min(n, sectors - s) * 512) for s, n in ranges]
    connections = data.draw(st.integers(1, 16))
    result = libnbd(CONCURRENT_READS, {"uri": served.uri, "image": str(image),
                                       "ranges": ranges, "connections": connections})
    assert result == {"bad": [], "done": len(ranges)}


def test_thread_model_key(built):
    for key, model in ((None, "serialize_requests"), ("parallel", "parallel"),
                       ("serialize_requests", "serialize_requests")):
        proc = subprocess.run(
            ["nbdkit", "-v", "-U", "-", "--run", "true", "python", str(PLUGIN),
             f"image={built[0]}", *([f"thread_model={key}"] if key else [])],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"using thread model: {model}" in proc.stderr


# -- dir= -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three images of three different trees; plus files that are not exports."""
    base = tmp_path_factory.mktemp("exports")
    out = base / "images"
    out.mkdir()
    expected = {}
    for i, name in enumerate(["beta", "alpha", "gamma"]):
        src = make_source(base / f"src-{name}", seed=i + 10, big=20_000 + i)
        r = make_image(src, out / f"{name}.img", date=DATE)
        expected[name] = (r.commit, r.tree)
    (out / "notes.txt").write_text("not an image\n")
    (out / ".hidden.img").write_bytes(b"not served")
    return out, expected


def test_dir_lists_and_serves_every_image(folder, tmp_path):
    out, expected = folder
    with NbdkitServer(PLUGIN, f"dir={out}", unix=True) as server:
        listing = nbdinfo_json(server.uri, "--list")
        names = {e["export-name"]: e["description"] for e in listing["exports"]}
        assert set(names) == {"alpha", "beta", "gamma"}
        for name, (commit, tree) in expected.items():
            assert names[name] == f"docteur image: commit {commit} tree {tree}"
            uri = unix_uri(server.socket, name)
            assert nbdcopy_to_bytes(uri, tmp_path) == (out / f"{name}.img").read_bytes()
        # The file name is accepted too; the default export is the first name.
        assert nbdcopy_to_bytes(unix_uri(server.socket, "gamma.img"), tmp_path) == \
            (out / "gamma.img").read_bytes()
        assert nbdcopy_to_bytes(server.uri, tmp_path) == (out / "alpha.img").read_bytes()
        proc = subprocess.run(["nbdinfo", unix_uri(server.socket, "notes")],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        proc = subprocess.run(["nbdinfo", unix_uri(server.socket, "../images/alpha")],
                              capture_output=True, text=True)
        assert proc.returncode != 0


def test_dir_listing_shows_a_bad_image_as_refused(folder, tmp_path):
    """An image added after start-up is checked when listed; a bad one is
    listed with the reason, and the good ones still are."""
    out, expected = folder
    images = tmp_path / "images"
    images.mkdir()
    good = (out / "alpha.img").read_bytes()
    (images / "alpha.img").write_bytes(good)
    with NbdkitServer(PLUGIN, f"dir={images}", unix=True) as server:
        bad = bytearray(good)
        bad[layout.PACK_OFFSET:layout.PACK_OFFSET + 4] = b"JUNK"
        (images / "late.img").write_bytes(bytes(bad))
        listed = libnbd(LIST_EXPORTS, {"uri": server.uri})
    commit, tree = expected["alpha"]
    assert set(listed) == {"alpha", "late"}
    assert listed["alpha"] == f"docteur image: commit {commit} tree {tree}"
    assert listed["late"].startswith(f"refused: {images / 'late.img'}: PACK header: "
                                     "bad PACK signature b'JUNK'")


def test_dir_default_key(folder, tmp_path):
    out, _ = folder
    with NbdkitServer(PLUGIN, f"dir={out}", "default=gamma", unix=True) as server:
        assert nbdcopy_to_bytes(server.uri, tmp_path) == (out / "gamma.img").read_bytes()


# -- replacing an image while it is served ------------------------------------------


def test_replaced_image_old_connections_keep_the_old_one(tmp_path):
    src_a = make_source(tmp_path / "a", seed=1, big=2_500_000)
    src_b = make_source(tmp_path / "b", seed=2, big=1_000_000)
    live = tmp_path / "live.img"
    make_image(src_a, live, date=DATE)
    old = live.read_bytes()
    new_result = make_image(src_b, tmp_path / "next.img", date=DATE)
    new = (tmp_path / "next.img").read_bytes()
    bad = bytearray(new)
    bad[layout.PACK_OFFSET:layout.PACK_OFFSET + 4] = b"JUNK"
    (tmp_path / "bad.img").write_bytes(bytes(bad))

    with NbdkitServer(PLUGIN, f"image={live}", unix=True) as server:
        holder = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLD_OPEN, server.uri],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(holder.stdout.readline())["size"] == len(old)
            os.rename(tmp_path / "next.img", live)  # atomic replacement
            assert nbdcopy_to_bytes(server.uri, tmp_path) == new
            desc = nbdinfo_json(server.uri)["exports"][0]["description"]
            assert new_result.commit in desc and new_result.tree in desc
            # A damaged replacement is refused to new clients only.
            os.rename(tmp_path / "bad.img", live)
            proc = subprocess.run(["nbdinfo", server.uri], capture_output=True, text=True)
            assert proc.returncode != 0
            holder.stdin.write("go\n")
            holder.stdin.flush()
            final = json.loads(holder.stdout.readline())
        finally:
            holder.kill()
            holder.wait()
    assert final == {"size": len(old), "sha": hashlib.sha256(old).hexdigest(),
                     "first_same": True}


# -- the project's own NBD client and reader ------------------------------------------


def test_project_reader_reads_files_through_the_plugin(served, tree):
    from docteur_core.reader import Image

    with Image.open(served.uri) as image:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            rel = path.relative_to(tree).as_posix()
            assert image.get(rel) == path.read_bytes(), rel
        assert sorted(name for name, _ in image.list("")) == \
            sorted(p.name for p in tree.iterdir())


def test_project_reader_opens_a_dir_export(folder):
    from docteur_core.reader import Image
    from docteur_core.verify import verify_image
    from docteur_core.blockdev.device import open_device

    out, expected = folder
    with NbdkitServer(PLUGIN, f"dir={out}", unix=True) as server:
        uri = unix_uri(server.socket, "beta")
        with Image.open(uri) as image:
            assert image.get("docs/deep/er/note.txt") == b"seed 10\n"
        with open_device(uri) as device:
            report = verify_image(device)
        assert report.ok and report.commit == expected["beta"][0]


def test_imagecheck_agrees_with_the_builder(built):
    image, commit, tree = built
    data = image.read_bytes()
    info = imagecheck.check_image(MemoryDevice(data))
    assert (info.commit_hex, info.tree_hex, info.size) == (commit, tree, len(data))
    assert info.block_size == 4096
