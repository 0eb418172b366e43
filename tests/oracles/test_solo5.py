"""The Solo5 guest (docteur_core/boot/solo5): real tenders, a real unikernel.

Solo5 and the guest are built once per session into the cache
($DOCTEUR_CACHE or ~/.cache/docteur), so later sessions only hash inputs.
What the guest prints is compared with `docteur cat` on the host, byte for
byte, for images made by make_image (block sizes 512 and 4096, deltas) and
by git alone (REF_DELTA), read from a file, through the project's nbdkit
plugin and nbdfuse, and from an NBD URI. A missing prerequisite (Solo5's
source, libseccomp-dev, nbdfuse, ...) fails the tests with its reason.

Trust (issue 21): the guest checks every object it reads against its git
id, back to the header's commit or a pinned one; forged images (tests/helpers/forge)
are refused with no `out` frame at all, and `docteur boot --solo5` pins a
local image's commit before any server serves it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core import cli
from docteur_core.boot import solo5
from docteur_core.boot.solo5 import command as solo5_command
from docteur_core.boot.solo5 import runner as solo5_runner
from docteur_core.format import layout, pack
from docteur_core.make import make_image
from docteur_core.reader import Image
from docteur_core.boot.solo5.runner import tender_command

from tests.helpers import forge
from tests.helpers.support import PLUGIN, REPO_ROOT, NbdkitServer, git_reference_image

pytestmark = [pytest.mark.slow, pytest.mark.solo5]

DATE = "2024-01-02T03:04:05Z"


def docteur(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, cwd=REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="session")
def built():
    """Solo5's tenders and the guest, built (or found in the cache) once."""
    return solo5.build()


def _versions(seed: int, count: int) -> list[bytes]:
    """`count` similar texts of ~60 KB: each a few edits away from the last,
    so that git stores most of them as deltas (chains, not one level)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij ") for _ in range(7)) for _ in range(400)]
    text = bytearray(b"\n".join(rnd.choice(words) for _ in range(7000)))
    out = []
    for _ in range(count):
        for _ in range(20):
            at = rnd.randrange(len(text))
            text[at:at + 5] = rnd.choice(words)
        out.append(bytes(text))
    return out


def make_tree(root: Path) -> Path:
    """Text and binary files, nested paths, odd names, a link, similar files."""
    rnd = random.Random(7)
    (root / "docs" / "guide" / "deep").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "similar").mkdir()
    (root / "a dir").mkdir()
    (root / "README.txt").write_text("hello from docteur\n")
    (root / "empty").write_bytes(b"")
    (root / "docs" / "guide" / "intro.md").write_text("# Intro\n\n" + "text line\n" * 500)
    (root / "docs" / "guide" / "deep" / "x.json").write_text('{"deep": true}\n')
    (root / "bin" / "blob.bin").write_bytes(rnd.randbytes(150_000) + bytes(1000))
    (root / "bin" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool.sh", 0o755)
    (root / "a dir" / "with space %41.txt").write_text("spaces and a percent sign\n")
    (root / "ünïcödé.txt").write_text("non-ASCII name\n")
    os.symlink("README.txt", root / "link")
    for i, text in enumerate(_versions(3, 6)):
        (root / "similar" / f"v{i}.txt").write_bytes(text)
    return root


def files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() or p.is_symlink())


def entry_types(image: Path) -> dict[int, int]:
    """How many pack entries of each type the image holds (git's view of it)."""
    data = image.read_bytes()
    header = layout.parse_header(data, len(data))
    pos, counts = 40, {}
    for _ in range(pack.parse_pack_header(data[28:40])):
        eh = pack.parse_entry_header(data[pos:pos + pack.MAX_ENTRY_HEADER], f"at {pos}")
        _, used = pack.inflate_from(lambda off, n: data[off:off + n], pos + eh.header_len,
                                    eh.size, header.idx_offset, f"at {pos}")
        counts[eh.type] = counts.get(eh.type, 0) + 1
        pos += eh.header_len + used
    return counts


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module", params=[512, 4096])
def image(request, source, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / f"site-{request.param}.img"
    make_image(source, path, date=DATE, block_size=request.param)
    return path


@pytest.fixture(scope="module")
def expected(image, source):
    """What `docteur cat` prints for every file of the image."""
    out = {}
    for name in files_of(source):
        proc = docteur("cat", image, name)
        assert proc.returncode == 0, proc.stderr
        out[name] = proc.stdout
    return out


def check_all(results, expected):
    for (name, want), got in zip(expected.items(), results):
        assert got.status == 0, (name, got.stderr)
        assert got.stderr == b""
        assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(want).hexdigest(), name
        assert got.stdout == want, name


def test_the_image_holds_deltas(image):
    assert entry_types(image).get(pack.OBJ_OFS_DELTA, 0) >= 3


def test_cat_from_a_file_equals_docteur_cat(built, image, expected):
    results = solo5.run_many(image, [("cat", n) for n in expected], "spt")
    check_all(results, expected)


def test_sha256_verb(built, image, expected):
    results = solo5.run_many(image, [("sha256", n) for n in expected], "spt")
    for (name, want), got in zip(expected.items(), results):
        assert got.status == 0, (name, got.stderr)
        assert got.stdout == f"sha256 {hashlib.sha256(want).hexdigest()}  {len(want)}\n".encode()


@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_cat_through_the_plugin_and_nbdfuse(built, image, expected):
    results = solo5.run_many(image, [("cat", n) for n in expected], "spt", serve="docteur")
    check_all(results, expected)
    assert not list(Path("/tmp").glob("docteur-nbdfuse-*/mnt/image"))


@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_cat_from_an_nbd_uri(built, image, expected):
    name = "similar/v5.txt"
    with NbdkitServer(PLUGIN, f"image={image}", unix=True) as server:
        status, out, err = solo5.run(server.uri, "cat", name)
    assert (status, out, err) == (0, expected[name], b"")


def test_device_block_size_4096(built, tmp_path, source):
    """The tender's sector size (4096 here) is not the image's padding."""
    img = tmp_path / "s.img"
    make_image(source, img, date=DATE, block_size=4096)
    status, out, _ = solo5.run(img, "cat", "similar/v3.txt", sector_size=4096)
    assert status == 0
    assert out == (source / "similar" / "v3.txt").read_bytes()


def test_ref_delta_image_made_by_git(built, tmp_path, source):
    img = tmp_path / "ref.img"
    git_reference_image(source, img, ofs_delta=False)
    assert entry_types(img).get(pack.OBJ_REF_DELTA, 0) >= 3
    names = [n for n in files_of(source) if n.startswith("similar/")]
    results = solo5.run_many(img, [("cat", n) for n in names])
    check_all(results, {n: (source / n).read_bytes() for n in names})


def test_auto_picks_a_tender_that_works(built, image, expected):
    status, out, _ = solo5.run(image, "cat", "bin/blob.bin", tender="auto")
    assert status == 0 and out == expected["bin/blob.bin"]


def test_hvt_runs_the_guest_where_kvm_is(built, image, expected):
    """hvt needs /dev/kvm; without it the tender's reason is the error."""
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        # A small file: on some hosts KVM is emulated and hvt is very slow.
        assert solo5.run(image, "cat", "README.txt", tender="hvt") == \
            (0, expected["README.txt"], b"")
        assert solo5.run(image, "cat", "nope", tender="hvt") == \
            (1, b"", b"error: /nope does not exist\n")
    else:
        with pytest.raises(solo5.Solo5Error, match="solo5-hvt exited with status"):
            solo5.run(image, "cat", "README.txt", tender="hvt")


@pytest.mark.parametrize("path, message", [
    ("nope", "/nope does not exist"),
    ("docs/guide/missing.md", "/docs/guide/missing.md does not exist"),
    ("docs/guide", "/docs/guide is a directory"),
    ("/", "/ is a directory"),
    ("README.txt/x", "/README.txt is not a directory"),
])
def test_errors_are_one_line_and_a_status(built, image, path, message):
    status, out, err = solo5.run(image, "cat", path)
    assert (status, out, err) == (1, b"", f"error: {message}\n".encode())
    host = docteur("cat", image, path)
    assert host.returncode == 1
    assert host.stderr.decode().strip().endswith(message)


def test_object_too_big_for_the_memory(built, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(1).randbytes(5_000_000))
    img = tmp_path / "big.img"
    make_image(src, img, date=DATE)
    status, out, err = solo5.run(img, "sha256", "big.bin", memory=4)
    assert status == 1 and out == b""
    assert err.startswith(b"error: object too big for the memory: ")
    status, out, _ = solo5.run(img, "sha256", "big.bin")
    digest = hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
    assert (status, out) == (0, f"sha256 {digest}  5000000\n".encode())


def test_damaged_images_are_reported(built, image, tmp_path):
    data = bytearray(image.read_bytes())
    bad = tmp_path / "bad-signature.img"
    bad.write_bytes(bytes(data[:28]) + b"PACX" + bytes(data[32:]))
    status, _, err = solo5.run(bad, "cat", "README.txt")
    assert status == 1
    assert err == b"error: damaged image: no PACK version 2 at offset 28\n"
    # Zero the zlib data of the base the similar files are deltas of.
    with Image.open(image, mode="fast") as reader:
        at = min(node.offset for node in reader.entries("similar"))
    broken = tmp_path / "zeroed.img"
    data[at + 8:at + 72] = bytes(64)
    broken.write_bytes(bytes(data))
    results = solo5.run_many(broken, [("cat", f"similar/v{i}.txt") for i in range(6)])
    for r in results:
        assert r.status == 1 and r.stdout == b""
        assert r.stderr.startswith(b"error: damaged image: the entry at pack offset ")
        assert len(r.stderr.splitlines()) == 1


def stalled_cache(built, folder: Path, fifo: Path, argv: Path) -> Path:
    """A cache whose build is found as it is, with an spt tender that cannot
    finish: a script that writes its arguments to `argv`, then waits to read
    `fifo`, which nobody ever opens for writing (the test holds it)."""
    final = built.tenders["spt"].parent
    cache = folder / "cache"
    mine = cache / final.relative_to(solo5.cache_root())
    mine.mkdir(parents=True)
    for path in [*built.unikernels.values(), built.tenders["hvt"]]:
        os.symlink(path, mine / path.name)
    tender = mine / built.tenders["spt"].name
    tender.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{argv}'\n"
                      f"exec cat '{fifo}'\n")
    tender.chmod(0o755)
    os.mkfifo(fifo)
    return cache


@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_a_timeout_unmounts_and_stops_everything(built, image, tmp_path):
    """The whole chain (nbdkit, nbdfuse, the tender) is set up, and the
    tender can never finish: it waits on a FIFO only the test could open.
    So the timeout fires whatever the machine's load, and everything the
    run started is stopped and unmounted."""
    from tests.helpers.support import processes

    fifo, argv = tmp_path / "never.fifo", tmp_path / "tender.argv"
    cache = stalled_cache(built, tmp_path, fifo, argv)
    with pytest.raises(solo5.Solo5Error, match="did not finish within 1 s"):
        solo5.run(image, "cat", "README.txt", serve="docteur", timeout=1.0, cache_dir=cache)
    # The tender was started on the file nbdfuse attached (the chain was up).
    words = argv.read_text().splitlines()
    block = [w for w in words if w.startswith("--block:storage=")]
    assert len(block) == 1 and block[0].endswith("/mnt/image"), words
    # This run's folder (not a glob of /tmp: other runs may be attaching
    # theirs meanwhile) is unmounted and gone.
    folder = Path(block[0].split("=", 1)[1]).parent.parent
    assert folder.name.startswith("docteur-nbdfuse-"), folder
    assert not os.path.ismount(folder / "mnt") and not folder.exists()
    left = [(pid, cmd) for pid, cmd in processes()
            if any(str(fifo).encode() in w or str(image).encode() in w for w in cmd)
            and pid != os.getpid()]
    assert left == []


def test_the_build_is_cached(built):
    again = solo5.build()
    assert again == built
    assert all(p.is_file() for p in [*built.tenders.values(), *built.unikernels.values()])


def test_concurrent_builds_share_one_result(built, tmp_path):
    """Two fresh builds at once: one builds, the other waits and reuses it."""
    zlib = solo5.cache_root() / "downloads" / "zlib_1.2.13.dfsg.orig.tar.bz2"
    env = {**os.environ, "DOCTEUR_CACHE": str(tmp_path / "cache"),
           "DOCTEUR_ZLIB_SOURCE": str(zlib)}
    code = "from docteur_core.boot import solo5; print(solo5.build().unikernels['spt'])"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert outs[0][0] == outs[1][0]
    entries = sorted(p.name for p in (tmp_path / "cache" / "solo5").iterdir())
    assert entries == [".lock", Path(outs[0][0].decode().strip()).parent.name]


def test_a_missing_solo5_source_is_one_clear_line(tmp_path):
    with pytest.raises(solo5.Solo5Error) as info:
        solo5.build(cache_dir=tmp_path, solo5_source=tmp_path / "nothing.tar.gz")
    assert "solo5-0.9.3.tar.gz" in str(info.value) and "\n" not in str(info.value)


def test_paths_are_percent_encoded_on_the_command_line(built):
    cmd = tender_command(Path("t"), Path("u"), Path("i"), "cat", "a dir/ü %.txt")
    assert cmd[-3:] == ["--solo5:quiet", "cat", "a%20dir/%C3%BC%20%25.txt"]


def test_the_pin_and_no_verify_on_the_command_line():
    pin = "AB" * 20
    cmd = tender_command(Path("t"), Path("u"), Path("i"), "sha256", "x", commit=pin,
                         verify=False)
    assert cmd[-6:] == ["--solo5:quiet", "-n", "-c", "ab" * 20, "sha256", "x"]
    with pytest.raises(solo5.Solo5Error, match="not a commit id"):
        tender_command(Path("t"), Path("u"), Path("i"), "cat", "x", commit="abc")


# --- the command line -------------------------------------------------------------

@pytest.mark.qemu
@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_boot_solo5_prints_text_and_describes_binary(built, image, expected):
    proc = docteur("boot", "--solo5", "spt", image, "cat", "docs/guide/intro.md")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected["docs/guide/intro.md"]
    assert b"serving" in proc.stderr and b"nbdfuse" in proc.stderr
    blob = expected["bin/blob.bin"]
    proc = docteur("boot", "--solo5", "spt", "-q", image, "cat", "bin/blob.bin")
    assert proc.returncode == 0
    assert proc.stdout == (f"binary: {len(blob)} bytes, sha256 "
                           f"{hashlib.sha256(blob).hexdigest()}\n").encode()
    proc = docteur("boot", "--solo5", "spt", "--raw", "--no-server", image, "cat", "bin/blob.bin")
    assert proc.returncode == 0 and proc.stdout == blob


@pytest.mark.qemu
def test_boot_solo5_errors_and_statuses(built, image):
    proc = docteur("boot", "--solo5", "spt", "-q", "--no-server", image,
                   "sha256", "README.txt", ";", "cat", "nope")
    assert proc.returncode == 1
    digest = hashlib.sha256(b"hello from docteur\n").hexdigest()
    assert proc.stdout.decode().splitlines() == [
        "--- sha256 README.txt (status 0)", f"sha256 {digest}  19",
        "--- cat nope (status 1)"]
    assert proc.stderr == b"error: /nope does not exist\n"
    proc = docteur("boot", "--solo5", "spt", image, "ls")
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == [
        "docteur boot: ls: the Solo5 guest runs cat PATH or sha256 PATH"]


# --- trust: a pinned commit, every object checked (issue 21) -----------------------

README = b"hello from docteur\n"


def guest(built, image: Path, *words: str) -> tuple[int, dict[str, bytes]]:
    """Run the guest with these command-line words; (status, its streams):
    to tell an empty `out` frame from none at all."""
    cmd = [str(built.tenders["spt"]), f"--block:storage={image}",
           str(built.unikernels["spt"]), "--solo5:quiet", *words]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    streams, _ = solo5.parse_console(done.stdout)
    return done.returncode, streams


def refused(built, image: Path, *words: str) -> bytes:
    """The guest's error line for words: status 1, an err frame, no out frame."""
    status, streams = guest(built, image, *words)
    assert status == 1, streams
    assert "out" not in streams, streams
    assert len(streams["err"].splitlines()) == 1
    return streams["err"]


@pytest.fixture(scope="module")
def forged(source, tmp_path_factory):
    """A good image and its forgeries, each refused for one reason."""
    folder = tmp_path_factory.mktemp("forged")
    good = folder / "good.img"
    make_image(source, good, date=DATE)
    data = good.read_bytes()
    images = {"good": good}
    # The same tree on another date: another valid image, of the same size.
    images["other"] = folder / "other.img"
    make_image(source, images["other"], date="2024-01-02T03:04:06Z")
    # README.txt's blob re-deflated as other bytes of its size, CRC-32 fixed.
    images["blob"] = folder / "blob.img"
    images["blob"].write_bytes(forge.rewrite_object(
        data, pack.object_id("blob", README), README.upper()))
    # The commit's dates moved by a second, in place (the header's id kept).
    _, text = forge.whole_object(data, data[:20])
    images["commit"] = folder / "commit.img"
    images["commit"].write_bytes(forge.rewrite_object(
        data, data[:20], text.replace(b" 1704164645 ", b" 1704164646 ")))
    # A root tree, listed under its honest id, naming another blob.
    images["tree"] = folder / "tree.img"
    commit, _ = forge.repointed_tree_image(images["tree"])
    ids = {name: path.read_bytes()[:20].hex() for name, path in images.items()}
    assert ids["tree"] == commit.hex()
    assert ids["blob"] == ids["commit"] == ids["good"] != ids["other"]
    assert images["other"].stat().st_size == good.stat().st_size
    return images, ids


def test_the_good_image_is_accepted_pinned_and_verified(built, forged, source):
    images, ids = forged
    status, streams = guest(built, images["good"], "-c", ids["good"], "cat", "README.txt")
    assert status == 0 and streams["out"] == README and "err" not in streams
    names = ["similar/v5.txt", "docs/guide/deep/x.json", "a dir/with space %41.txt"]
    results = solo5.run_many(images["good"], [("cat", n) for n in names],
                             commit=ids["good"].upper())
    check_all(results, {n: (source / n).read_bytes() for n in names})


def test_a_re_deflated_blob_is_refused(built, forged):
    images, _ = forged
    blob = pack.object_id("blob", README).hex()
    want = pack.object_id("blob", README.upper()).hex()
    for verb in ("cat", "sha256"):
        assert refused(built, images["blob"], verb, "README.txt") == (
            f"error: damaged image: SHA-1 mismatch: the blob {blob} (/README.txt) "
            f"hashes to {want}\n").encode()
    # Everything else in the forgery holds: unverified, the guest prints it.
    assert solo5.run(images["blob"], "cat", "README.txt", verify=False) == \
        (0, README.upper(), b"")
    # Another file of the same image is still read, verified.
    assert solo5.run(images["blob"], "cat", "link") == (0, b"README.txt", b"")


def test_a_forged_commit_is_refused(built, forged):
    images, ids = forged
    err = refused(built, images["commit"], "cat", "README.txt")
    assert err.startswith(f"error: damaged image: SHA-1 mismatch: the commit "
                          f"{ids['commit']} hashes to ".encode())
    assert refused(built, images["commit"], "-c", ids["good"], "cat", "README.txt") == err
    assert solo5.run(images["commit"], "cat", "README.txt", verify=False) == (0, README, b"")


def test_a_tree_naming_another_blob_is_refused(built, forged):
    images, _ = forged
    err = refused(built, images["tree"], "cat", "README.txt")
    assert err.startswith(b"error: damaged image: SHA-1 mismatch: the tree ")
    assert b" (/) hashes to " in err
    assert solo5.run(images["tree"], "cat", "README.txt", verify=False) == \
        (0, b"another file\n", b"")


def test_another_commit_is_refused_when_pinned(built, forged):
    images, ids = forged
    line = (f"error: wrong image: it holds commit {ids['other']}, not the pinned "
            f"{ids['good']}\n").encode()
    for words in (["-c", ids["good"]], ["-n", "-c", ids["good"]], ["-c", ids["good"], "-n"]):
        status, streams = guest(built, images["other"], *words, "cat", "README.txt")
        assert (status, streams.get("err"), "out" in streams) == (1, line, False)
        assert streams["log"] == b"1 block reads\n"   # the header's, and no other
    # Unpinned, it is a valid image: read, checked against its own header.
    assert solo5.run(images["other"], "cat", "README.txt") == (0, README, b"")


@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_an_nbd_export_is_checked_against_its_header(built, forged):
    images, ids = forged
    # nbdkit's file plugin: the project's own refuses this forgery at start-up
    # (its pack's trailer is not the one its path index is bound to).
    with NbdkitServer("file", f"file={images['blob']}", unix=True) as server:
        status, out, err = solo5.run(server.uri, "cat", "README.txt")
        assert (status, out) == (1, b"")
        assert err.startswith(b"error: damaged image: SHA-1 mismatch: the blob ")
        assert solo5.run(server.uri, "cat", "empty", commit=ids["good"]) == (0, b"", b"")
        assert solo5.run(server.uri, "cat", "empty", commit=ids["other"])[0] == 1


def test_guest_usage_with_a_bad_pin(built, forged):
    images, _ = forged
    for words in (["-c", "abc", "cat", "README.txt"], ["-c", "g" * 40, "cat", "x"],
                  ["-c"], ["-n"]):
        status, streams = guest(built, images["good"], *words)
        assert status == 2 and "out" not in streams
        assert streams["err"].startswith(b"error: usage: [-n] [-c COMMIT] cat PATH")


def boot(argv: list[str], capsysbinary) -> tuple[int, bytes, bytes]:
    """`docteur boot ARGV` in this process (so a test can swap the server)."""
    status = cli.main(["boot", *map(str, argv)])
    captured = capsysbinary.readouterr()
    return status, captured.out, captured.err


@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_boot_solo5_pins_the_local_image_against_a_swapping_server(
        built, forged, monkeypatch, capsysbinary):
    """The server serves another valid image (same size) than the file the
    host read: the pin read from the file's header catches it."""
    images, ids = forged
    real = solo5_runner.image_server
    monkeypatch.setattr(solo5_runner, "image_server",
                        lambda image, kind="docteur": real(images["other"], kind))
    status, out, err = boot(["--solo5", "spt", images["good"], "cat", "README.txt"],
                            capsysbinary)
    assert (status, out) == (1, b"")
    assert f"pinning commit {ids['good']}".encode() in err
    assert err.endswith(f"error: wrong image: it holds commit {ids['other']}, not the "
                        f"pinned {ids['good']}\n".encode())
    # The same server, the image it serves pinned: read.
    status, out, err = boot(["--solo5", "spt", "--commit", ids["other"], images["good"],
                             "cat", "README.txt"], capsysbinary)
    assert (status, out) == (0, README)


@pytest.mark.qemu
@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_boot_solo5_commit_and_no_verify(built, forged):
    images, ids = forged
    proc = docteur("boot", "--solo5", "spt", "--commit", ids["other"], images["good"],
                   "cat", "README.txt")
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert proc.stderr.endswith(f"error: wrong image: it holds commit {ids['good']}, "
                                f"not the pinned {ids['other']}\n".encode())
    proc = docteur("boot", "--solo5", "spt", "-q", "--no-server", images["blob"],
                   "cat", "README.txt")
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert proc.stderr.startswith(b"error: damaged image: SHA-1 mismatch: the blob ")
    proc = docteur("boot", "--solo5", "spt", "-q", "--no-verify", "--server", "file",
                   images["blob"], "cat", "README.txt")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, README.upper(), b"")
    # Options between IMAGE and the verb are boot's too.
    proc = docteur("boot", "--solo5", "spt", "-q", images["good"], "--commit", ids["other"],
                   "cat", "README.txt")
    assert proc.returncode == 1 and b"wrong image" in proc.stderr


@pytest.mark.qemu
@pytest.mark.nbdkit
@pytest.mark.fuse  # nbdfuse
def test_boot_checks_a_signer_on_the_host_and_pins_the_guest(built, source, forged, tmp_path):
    """The guest has no ssh-keygen: `boot --allowed-signers` checks the
    signature on the host, then pins the guest to the commit it proved."""
    from tests.helpers.signing import allowed_file, keygen

    key = keygen(tmp_path / "alice", "alice@example.com")
    signers = allowed_file(tmp_path / "allowed", "alice@example.com", key)
    signed = tmp_path / "signed.img"
    make_image(source, signed, date=DATE, sign=str(key))
    proc = docteur("boot", "--solo5", "spt", "--allowed-signers", signers, signed,
                   "cat", "README.txt")
    assert (proc.returncode, proc.stdout) == (0, README), proc.stderr
    assert b"is signed by an allowed key; the guest is pinned to it" in proc.stderr
    images, _ = forged
    proc = docteur("boot", "--solo5", "spt", "--allowed-signers", signers, images["good"],
                   "cat", "README.txt")  # unsigned: refused before any guest runs
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert b"not signed" in proc.stderr and b"docteur boot: booting" not in proc.stderr


