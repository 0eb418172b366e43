"""The host/guest protocol of `docteur boot`, without booting anything.

The commands go to the guest on the kernel command line (encoded by
docteur_core.boot.runner, decoded by qemu/guest_run.py) and the results come back
on the serial console (printed by qemu/guest_run.py, parsed by
docteur_core.boot.runner). Both halves are real code from both sides.
"""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.boot import runner as boot
from tests.helpers.support import REPO_ROOT

_spec = importlib.util.spec_from_file_location("guest_run", REPO_ROOT / "docteur_core" / "boot" / "initramfs" / "guest_run.py")
guest_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_run)

words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
commands_strategy = st.lists(st.lists(words, max_size=6), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(commands_strategy)
def test_commands_round_trip_through_the_kernel_command_line(commands):
    encoded = boot.encode_commands(commands)
    assert " " not in encoded and '"' not in encoded
    cmdline = f"BOOT_IMAGE=x console=ttyS0 docteur.cmds={encoded} quiet\n"
    assert guest_run.commands_from_cmdline(cmdline) == commands


def test_too_many_commands_is_a_clear_error():
    many = [[f"cat-{i}-{hashlib.sha256(str(i).encode()).hexdigest()}"] for i in range(60)]
    with pytest.raises(boot.BootError, match="do not fit on the kernel command line"):
        boot.kernel_append(many)


outputs = st.binary(max_size=300)
results_strategy = st.lists(
    st.tuples(st.integers(-64, 255), outputs, outputs), min_size=1, max_size=5)


def _console(results, noise=b""):
    text = noise + b"[    0.000000] Linux version 6.1\r\n"
    for index, (status, out, err) in enumerate(results, 1):
        text += guest_run.report(index, status, out, err, 0.25)
    text += guest_run.done(len(results)) + b"[    9.1] reboot: Power down\r\n"
    # The serial line's tty turns \n into \r\n.
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").decode()


@settings(max_examples=200, deadline=None)
@given(results_strategy, st.binary(max_size=40).map(lambda b: b.replace(b"=", b"")))
def test_results_round_trip_through_the_console(results, noise):
    commands = [["-c", str(i)] for i in range(len(results))]
    noise = noise.decode("latin-1").encode()  # any text before the markers
    parsed = boot.parse_console(_console(results, noise), commands)
    assert [(r.status, r.stdout, r.stderr) for r in parsed] == results
    assert [r.argv for r in parsed] == commands


def test_a_damaged_result_is_an_error_not_an_answer():
    console = _console([(0, b"hello world, this is the file\n" * 3, b"")])
    lines = console.split("\r\n")
    line = next(i for i, text in enumerate(lines) if text.startswith("aGVsbG8"))
    lines[line] = "aGVsbG8" + ("A" if lines[line][7] != "A" else "B") + lines[line][8:]
    with pytest.raises(boot.BootError, match="damaged"):
        boot.parse_console("\r\n".join(lines), [["-c", "x"]])


def test_a_missing_result_is_an_error():
    console = _console([(0, b"one", b""), (0, b"two", b"")])
    cut = console[:console.index("=====DOCTEUR-BEGIN 2")]
    with pytest.raises(boot.BootError, match="1 of 2 results"):
        boot.parse_console(cut, [["a"], ["b"]])


def test_a_guest_failure_is_reported_with_the_console():
    console = "[ 1.0] starting\r\n=====DOCTEUR-FAILED no /dev/vda after 20 s=====\r\n"
    with pytest.raises(boot.BootError, match="no /dev/vda") as caught:
        boot.parse_console(console, [["a"]])
    assert "starting" in str(caught.value)


def test_reader_command_and_modes():
    assert boot.reader_command(["cat", "a"], "light") == [
        "-m", "docteur_core.reader.guest", "/dev/vda", "--mode", "light", "cat", "a"]
    assert boot.reader_command(["--mode", "fast", "ls"], "light") == [
        "-m", "docteur_core.reader.guest", "/dev/vda", "--mode", "fast", "ls"]
    assert boot.split_commands(["cat", "a", ";", "ls"]) == [["cat", "a"], ["ls"]]
    with pytest.raises(boot.BootError):
        boot.split_commands(["cat", "a", ";"])


@pytest.mark.nbdkit
def test_nbd_uris_become_drive_options():
    assert boot.drive_option(boot.nbd_drive_options("nbd://127.0.0.1:10810/site")) == (
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=10810,"
        "export=site,if=virtio,readonly=on")
    assert boot.drive_option(boot.nbd_drive_options("nbd+unix:///?socket=/tmp/s.sock")) == (
        "driver=nbd,server.type=unix,server.path=/tmp/s.sock,if=virtio,readonly=on")
    # The NBD client's parser (docteur cat's): what it refuses, boot refuses.
    for bad in ("http://x/", "nbd+unix:///", "/path/not/a/uri", "nbd://h:1/a,b",
                "nbd+tcp://h/e", "nbd+unix://host/x?socket=/s", "nbd://host:99999/"):
        with pytest.raises(boot.BootError):
            boot.drive_option(boot.nbd_drive_options(bad))


def test_binary_output_is_shown_as_a_digest():
    data = bytes(range(256))
    assert boot.shown(data) == (
        f"binary: 256 bytes, sha256 {hashlib.sha256(data).hexdigest()}\n".encode())
    assert boot.shown("héllo\n".encode()) == "héllo\n".encode()
    assert boot.shown(b"a\0b") != b"a\0b"


def test_the_initramfs_writer_makes_archives_cpio_reads(tmp_path):
    """guest_image.py writes the initramfs itself (no root needed for
    device nodes); GNU cpio, an independent reader, must see the same tree."""
    import subprocess

    from docteur_core.boot import guest_image as build_guest
    archive = tmp_path / "test.cpio"
    payload = bytes(range(256)) * 5 + b"odd"
    with open(archive, "wb") as f:
        cpio = build_guest.Cpio(f)
        cpio.char_device("dev/console", 5, 1)
        cpio.file("usr/bin/tool", payload, 0o755)
        cpio.file("a/b/c/empty", b"")
        cpio.symlink("usr/bin/alias", "tool")
        cpio.close()
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(archive, "rb"),
                             capture_output=True, check=True).stdout.decode().split()
    assert listing == ["dev", "dev/console", "usr", "usr/bin", "usr/bin/tool", "a", "a/b",
                       "a/b/c", "a/b/c/empty", "usr/bin/alias"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "usr/*", "a/*"],
                   stdin=open(archive, "rb"), cwd=out, check=True)
    assert (out / "usr/bin/tool").read_bytes() == payload
    assert (out / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "a/b/c/empty").read_bytes() == b""
    assert (out / "usr/bin/alias").readlink().name == "tool"
