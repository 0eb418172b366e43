"""`docteur make` on a terminal and off it: the status line never runs into
another message, and a long `--compress max` is never silent.

The terminal is a real pseudo-terminal on stderr (as tests/verify/test_progress.py
does); stdout is a pipe, as in a script that reads the commit line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.terminal import run_on_tty

DATE = "2026-01-01T00:00:00Z"


def tree_with_a_fifo(root: Path) -> Path:
    """a/ first (the scan reports it done: a status line), then b/ holding a
    FIFO (skipped with a warning, while that status line is on screen)."""
    (root / "a").mkdir(parents=True)
    (root / "a" / "file.txt").write_text("kept\n")
    (root / "b").mkdir()
    os.mkfifo(root / "b" / "fifo")
    (root / "c.txt").write_text("also kept\n")
    return root


def test_the_status_line_is_erased_before_a_warning(tmp_path):
    src = tree_with_a_fifo(tmp_path / "src")
    status, out, tty = run_on_tty("make", "--date", DATE, str(src), str(tmp_path / "x.img"))
    assert status == 0, tty
    assert b"\rScanning files: " in tty  # a status line was on screen
    warning = b"docteur make: warning: "
    at = tty.index(warning)
    # Just before the warning: the status line erased (spaces, back to column 0).
    assert re.search(rb"\r +\r\Z", tty[:at]), tty[:at][-120:]
    # Nothing glued anywhere: every message starts a line.
    text = tty.replace(b"\r\n", b"\n")
    for line in re.split(rb"[\r\n]", text):
        assert line.count(b"docteur make:") <= 1, line
        assert b"docteur make" not in line or line.startswith(b"docteur make"), line
    # The summary line comes last, on a line of its own.
    last = text.rstrip(b"\n").rsplit(b"\n", 1)[-1].split(b"\r")[-1]
    assert last.startswith(f"{tmp_path / 'x.img'}: 2 files, ".encode()), text[-300:]
    assert out.startswith(f"{tmp_path / 'x.img'}: ".encode()) and b" commit " in out


def test_quiet_on_a_terminal_writes_only_the_warning(tmp_path):
    src = tree_with_a_fifo(tmp_path / "src")
    status, out, tty = run_on_tty("make", "-q", "--date", DATE, str(src),
                                  str(tmp_path / "x.img"))
    assert status == 0
    assert tty.replace(b"\r\n", b"\n") == f"docteur make: warning: {src}/b/fifo: skipped (FIFO)\n".encode()
    assert out.startswith(f"{tmp_path / 'x.img'}: ".encode())  # stdout is data: kept


@pytest.mark.parametrize("compress,name", [("max", "libdeflate level 12"),
                                           ("zopfli", "libdeflate level 12 then zopfli, "
                                                      "1 iterations")])
def test_compress_max_off_a_terminal_says_it_started_and_finished(tmp_path, compress, name):
    """stderr on a pipe: no carriage return, but a line when the re-encoding
    starts (before any entry is done) and one when every entry is. (The
    test extra installs deflate and zopfli: a missing one fails here.)"""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * (50 + i))
    image = tmp_path / "x.img"
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "--compress", compress,
                           "--zopfli-iterations", "1", "--date", DATE, str(src), str(image)],
                          stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr
    lines = proc.stderr.decode().splitlines()
    started = [l for l in lines if re.fullmatch(
        rf"docteur make: Recompressing \({re.escape(name)}\): 0/\d+ entries, 0 bytes saved", l)]
    assert len(started) == 1, lines
    total = int(re.search(r"0/(\d+)", started[0])[1])
    assert lines.index(started[0]) == 0
    done = [l for l in lines if f" {total}/{total} entries" in l]
    assert len(done) == 1 and lines.index(done[0]) == len(lines) - 2, lines
    assert lines[-1].startswith(f"{image}: 5 files, ")
    # -q: nothing of it.
    quiet = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--compress",
                            compress, "--zopfli-iterations", "1", "--date", DATE, str(src),
                            str(image)], stdin=subprocess.DEVNULL, capture_output=True)
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_default_compression_off_a_terminal_prints_only_the_summary(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "--date", DATE,
                           str(src), str(tmp_path / "x.img")],
                          stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 0
    assert len(proc.stderr.splitlines()) == 1 and b"\r" not in proc.stderr
