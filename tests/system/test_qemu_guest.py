"""End to end: a QEMU guest (TCG) reads files from an image served over NBD.

Real `docteur make`, real nbdkit (the project's plugin and nbdkit's file
plugin), real QEMU, the real guest kernel and initramfs (qemu/). A boot
costs seconds, so each boot runs many commands: the module boots the same
24 commands through each server, the CLI once, and a failing guest once;
the other tests stop QEMU early.

Every process these tests start carries a tag in its environment; after
each test no process may carry it any more (the runner must stop QEMU and
nbdkit on success, error, timeout, Ctrl-C, and even when it is killed).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from docteur_core.boot import runner as boot
from docteur_core.make import make_image
from tests.helpers.support import REPO_ROOT, NbdkitServer, git_reference_image

pytestmark = [pytest.mark.nbdkit, pytest.mark.qemu, pytest.mark.slow]

TAG_NAME = "DOCTEUR_GUEST_TEST_TAG"
TAG = f"{TAG_NAME}={uuid.uuid4().hex}".encode()
BOOT_TIMEOUT = 400.0

TEXT_FILES = {
    "README.txt": b"A generated tree for the guest tests.\n",
    "index.html": b"<!doctype html>\n<p>Hello, guest.</p>\n" * 20,
    "notes/\u00e9t\u00e9.md": "Unicode: \u00e9t\u00e9 \u2603\n".encode(),
    "deep/a/b/c/leaf.txt": b"leaf\n",
    "data/empty.txt": b"",
}


def _binary_files() -> dict[str, bytes]:
    rng = random.Random(5)
    return {
        "data/noise.bin": bytes(rng.getrandbits(8) for _ in range(70_000)),
        "data/all-bytes.bin": bytes(range(256)) * 16,
    }


CATS = [*TEXT_FILES, "data/noise.bin", "data/all-bytes.bin"]
LISTS = ["", "data", "deep/a"]
MISSING = "data/missing.bin"
# The raw disk as the guest sees it: the image's own bytes, end to end.
RAW_DIGEST = ["-c", "import _sha256, sys; "
              "sys.stdout.write(_sha256.sha256(open('/dev/vda', 'rb').read()).hexdigest())"]
# The entry point in a fresh interpreter, as a user would start it (the
# guest's runner otherwise forks a preloaded one, see qemu/guest_run.py).
FRESH = ["-u", "-m", "docteur_core.reader.guest", "/dev/vda", "--mode", "fast", "cat", "README.txt"]


def reader_commands(mode: str) -> list[list[str]]:
    return ([boot.reader_command(["cat", p], mode) for p in CATS]
            + [boot.reader_command(["ls", p] if p else ["ls"], mode) for p in LISTS]
            + [boot.reader_command(["cat", MISSING], mode)])


COMMANDS = [RAW_DIGEST, FRESH] + reader_commands("fast") + reader_commands("light")


# --- processes ----------------------------------------------------------------

def tagged_processes() -> list[str]:
    """Processes (other than this one) that inherited this module's tag."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if TAG not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {cmdline}")
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def wait_for_no_tagged_processes(seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := tagged_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module", autouse=True)
def tag_environment():
    name, value = TAG.decode().split("=", 1)
    os.environ[name] = value
    yield
    del os.environ[name]


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    left = wait_for_no_tagged_processes()
    assert not left, f"processes left running: {left}"


# --- the image and the boots ------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, bytes]:
    files = {**TEXT_FILES, **_binary_files()}
    root = tmp_path_factory.mktemp("guest-src")
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {"root": root, "files": files}


@pytest.fixture(scope="module")
def image(source, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("guest-img") / "guest.img"
    make_image(source["root"], path, date="2026-01-01T00:00:00Z")
    return path


@pytest.fixture(scope="module")
def boots(image) -> dict[str, boot.BootResult]:
    results = {}
    for server in ("docteur", "file"):
        results[server] = boot.boot(image, COMMANDS, server=server, timeout=BOOT_TIMEOUT)
        print(f"boot through the {server} server: {results[server].seconds:.1f} s, "
              f"{sum(r.seconds for r in results[server].results):.1f} s in commands")
    return results


def result(boots, server: str, argv: list[str]) -> boot.CommandResult:
    return boots[server].results[COMMANDS.index(argv)]


def listing(root: Path, folder: str) -> list[bytes]:
    entries = []
    for path in (root / folder).iterdir():
        entries.append(path.name.encode() + (b"/" if path.is_dir() else b""))
    return sorted(entries)


def host_run(image: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The same guest entry point, run on the host on the image file."""
    return subprocess.run([sys.executable, "-S", "-m", "docteur_core.reader.guest", str(image), *args],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


# --- what the guest read ---------------------------------------------------------------

@pytest.mark.parametrize("server", ["docteur", "file"])
def test_the_guest_disk_is_the_image(boots, image, server):
    got = result(boots, server, RAW_DIGEST)
    assert (got.status, got.stderr) == (0, b"")
    assert got.stdout.decode() == hashlib.sha256(image.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["fast", "light"])
def test_cat_in_the_guest_equals_the_source(boots, source, mode):
    for path in CATS:
        got = result(boots, "docteur", boot.reader_command(["cat", path], mode))
        expected = source["files"][path]
        assert (got.status, got.stderr) == (0, b""), path
        assert got.stdout == expected, path
        if path.endswith(".bin"):  # binary output is shown as a digest
            assert boot.shown(got.stdout) == (
                f"binary: {len(expected)} bytes, "
                f"sha256 {hashlib.sha256(expected).hexdigest()}\n").encode()
        else:
            assert boot.shown(got.stdout) == expected


@pytest.mark.parametrize("mode", ["fast", "light"])
def test_ls_in_the_guest_equals_the_source(boots, source, mode):
    for folder in LISTS:
        got = result(boots, "docteur",
                     boot.reader_command(["ls", folder] if folder else ["ls"], mode))
        assert (got.status, got.stderr) == (0, b""), folder
        names = sorted(line.split(b"\t", 1)[1] for line in got.stdout.splitlines())
        assert names == listing(source["root"], folder), folder


@pytest.mark.parametrize("mode", ["fast", "light"])
def test_a_missing_path_is_the_readers_not_found_error(boots, image, mode):
    got = result(boots, "docteur", boot.reader_command(["cat", MISSING], mode))
    on_host = host_run(image, ["--mode", mode, "cat", MISSING])
    assert got.status != 0 and got.stdout == b""
    assert MISSING.encode() in got.stderr and b"Traceback" not in got.stderr
    assert len(got.stderr.splitlines()) == 1
    assert (got.status, got.stderr) == (on_host.returncode, on_host.stderr)


def test_both_servers_give_the_same_guest_output(boots):
    def seen(server):
        return [(r.argv, r.status, r.stdout, r.stderr) for r in boots[server].results]
    assert seen("docteur") == seen("file")


def test_the_entry_point_in_a_fresh_interpreter(boots, source):
    got = result(boots, "docteur", FRESH)
    assert (got.status, got.stdout, got.stderr) == (0, source["files"]["README.txt"], b"")


# --- the command line ---------------------------------------------------------

def docteur(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "docteur_core", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_docteur_boot_on_an_nbd_uri(source, tmp_path):
    """The CLI: several commands, binary as a digest, the first failure's status.

    The export is an image made by git alone (tests.helpers.support), served by
    nbdkit's file plugin: the guest does not depend on our builder's choices.
    """
    noise = source["files"]["data/noise.bin"]
    reference = tmp_path / "reference.img"
    git_reference_image(source["root"], reference)
    with NbdkitServer("file", f"file={reference}", extra_options=("--readonly",)) as server:
        proc = docteur("boot", server.uri, "--mode", "fast", "cat", "data/noise.bin", ";",
                       "cat", MISSING, ";", "--mode", "light", "cat", "README.txt",
                       ";", "ls", "deep/a")
        out, err = proc.communicate(timeout=BOOT_TIMEOUT)
    assert proc.returncode == 1, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 7, lines
    assert lines[0].startswith("--- --mode fast cat data/noise.bin (status 0, ")
    assert lines[1] == f"binary: {len(noise)} bytes, sha256 {hashlib.sha256(noise).hexdigest()}"
    assert lines[2].startswith(f"--- --mode fast cat {MISSING} (status 1, ")
    assert lines[3].startswith("--- --mode light cat README.txt (status 0, ")
    assert lines[4] + "\n" == source["files"]["README.txt"].decode()
    assert lines[5].startswith("--- --mode fast ls deep/a (status 0, ")
    assert lines[6].endswith("\tb/")
    assert f"{MISSING}".encode() in err


# --- nothing left running, whatever happens ---------------------------------------

def start_boot_and_wait_for_qemu(image: Path) -> subprocess.Popen:
    proc = docteur("boot", str(image), "--timeout", "600", "ls")
    started = time.monotonic()
    line = b""
    while b"booting the guest" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "docteur boot exited early"
        assert time.monotonic() - started < 120, "docteur boot did not get to QEMU"
    time.sleep(1.0)  # QEMU is starting or running
    assert any("qemu-system" in p for p in tagged_processes())
    return proc


def test_ctrl_c_stops_qemu_and_nbdkit(image):
    proc = start_boot_and_wait_for_qemu(image)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    assert tagged_processes() == []


def test_sigterm_stops_qemu_and_nbdkit(image):
    proc = start_boot_and_wait_for_qemu(image)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert tagged_processes() == []


def test_a_killed_runner_leaves_nothing_behind(image):
    proc = start_boot_and_wait_for_qemu(image)
    proc.kill()  # no cleanup code runs: QEMU and nbdkit must notice on their own
    proc.communicate(timeout=60)
    assert wait_for_no_tagged_processes() == []


def test_a_timeout_is_an_error_and_stops_everything(image):
    never_ends = ["-c", "import time; time.sleep(3600)"]
    with pytest.raises(boot.BootError, match="did not finish within"):
        boot.boot(image, [never_ends], timeout=6)
    assert tagged_processes() == []


def test_a_damaged_image_is_refused_before_booting(image, tmp_path):
    bad = tmp_path / "bad.img"
    data = bytearray(image.read_bytes())
    data[28:32] = b"JUNK"  # the PACK signature
    bad.write_bytes(bytes(data))
    with pytest.raises(boot.BootError, match="nbdkit could not serve"):
        boot.boot(bad, [boot.reader_command(["ls"])], timeout=60)
    assert tagged_processes() == []


def test_a_failing_guest_reports_why_and_powers_off(image, monkeypatch):
    """qemu/init reports a runner that fails (here: a command line it cannot
    decode) with a marker, and powers off rather than hanging to the timeout."""
    monkeypatch.setattr(boot, "kernel_append",
                        lambda commands: f"{boot.BASE_APPEND} docteur.cmds=@@not-base64@@")
    with pytest.raises(boot.BootError, match="the guest failed: guest_run exited with 1") as caught:
        boot.boot(image, [["-c", "pass"]], server="file", timeout=BOOT_TIMEOUT)
    assert "binascii.Error" in str(caught.value)  # the console's tail comes with it
    assert tagged_processes() == []
