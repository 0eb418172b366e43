"""`docteur boot` refuses what the guest would refuse before booting it,
and the reader's commands name the image they found damaged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.support import REPO_ROOT, git_reference_image


def docteur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "a.txt").write_text("a\n")
    img = tmp_path_factory.mktemp("img") / "a.img"
    git_reference_image(src, img)
    return img


@pytest.mark.qemu
@pytest.mark.parametrize("command, message", [
    (["frob"], "frob: unknown verb 'frob' (one of: ls, cat, stat, tree, info)"),
    (["cat"], "cat: usage: cat PATH"),
    (["ls", ";", "cat", "a", "b"], "cat a b: usage: cat PATH"),
    (["ls", ";", "--mode", "fast", "--verify"], "--mode fast --verify: no verb (one of: ls, cat, stat, tree, info)"),
])
def test_bad_guest_commands_are_refused_before_booting(image, command, message):
    proc = docteur("boot", image, *command)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"docteur boot: {message}"]
    assert proc.stdout == ""


@pytest.mark.qemu
def test_too_little_memory_is_refused(image):
    proc = docteur("boot", "--memory", "64", image, "ls")
    assert proc.returncode == 2
    assert "64 MB is too little: the guest needs at least 128 MB" in proc.stderr
    assert "booting" not in proc.stderr


def test_reader_errors_name_the_image(tmp_path):
    bogus = tmp_path / "notes.img"
    bogus.write_bytes(b"not an image at all" * 100)
    proc = docteur("ls", bogus)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"docteur ls: {bogus}: not a docteur image (")
    assert len(proc.stderr.splitlines()) == 1
