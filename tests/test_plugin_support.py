"""Helpers for the plugin tests (no tests here): sources, real NBD clients.

libnbd's Python binding exists only for Debian's /usr/bin/python3 (the
test python is another interpreter), so client scripts run there, in a
subprocess, and report back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.support import PLUGIN

SYSTEM_PYTHON = "/usr/bin/python3"


def make_source(root: Path, seed: int = 1, big: int = 300_000) -> Path:
    """A small tree: text files, nested folders, one incompressible file."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text(f"docteur plugin test tree {seed}\n")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "guide.md").write_text("# guide\n" + "line of text\n" * 400)
    (root / "docs" / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "deep" / "er" / "note.txt").write_text(f"seed {seed}\n")
    (root / "random.bin").write_bytes(rng.randbytes(big))
    return root


def unix_uri(socket: str, export: str = "") -> str:
    return f"nbd+unix:///{export}?socket={socket}"


def libnbd(script: str, payload: dict | None = None, timeout: float = 60) -> dict:
    """Run `script` with the system python and libnbd; it prints one JSON line."""
    proc = subprocess.run([SYSTEM_PYTHON, "-c", script], input=json.dumps(payload or {}),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"libnbd client failed: {proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_nbdkit_once(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """nbdkit with the plugin that exits right after start-up (`--run true`)."""
    with tempfile.TemporaryDirectory(prefix="nbdkit-once-") as tmp:
        cmd = ["nbdkit", "--exit-with-parent", "-U", os.path.join(tmp, "s.sock"),
               "--run", "true", "python", str(PLUGIN), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# Reads random ranges through several connections at once, each in its own
# thread, and compares them with the image file.
CONCURRENT_READS = r"""
import json, sys, threading, nbd
p = json.load(sys.stdin)
data = open(p["image"], "rb").read()
bad, done = [], [0]
def worker(ranges):
    h = nbd.NBD()
    h.connect_uri(p["uri"])
    try:
        for off, n in ranges:
            if h.pread(n, off) != data[off:off + n]:
                bad.append([off, n])
            done[0] += 1
    finally:
        h.shutdown()
k = p["connections"]
threads = [threading.Thread(target=worker, args=(p["ranges"][i::k],)) for i in range(k)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"bad": bad, "done": done[0]}))
"""

# Tries every kind of write, with libnbd's client-side checks on and off.
WRITES = r"""
import json, sys, nbd
p = json.load(sys.stdin)
out = {}
for strict in (True, False):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(p["uri"])
    out["read_only"] = h.is_read_only()
    for name, call in (("pwrite", lambda: h.pwrite(b"X" * 512, 0)),
                       ("zero", lambda: h.zero(512, 0)),
                       ("trim", lambda: h.trim(512, 0)),
                       ("flush", lambda: h.flush())):
        try:
            call()
            out[f"{name}_{strict}"] = "accepted"
        except nbd.Error as e:
            out[f"{name}_{strict}"] = [e.errno, e.string]
    h.shutdown()
print(json.dumps(out))
"""

# A connection that stays open across a replacement of the image: it reads
# the first half, waits for a line on stdin, then reads everything again.
HOLD_OPEN = r"""
import hashlib, json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
first = h.pread(min(size, 1 << 20) // 2, 0)
print(json.dumps({"size": size}), flush=True)
sys.stdin.readline()
whole = b"".join(h.pread(min(1 << 20, size - o), o) for o in range(0, size, 1 << 20))
print(json.dumps({"size": h.get_size(), "sha": hashlib.sha256(whole).hexdigest(),
                  "first_same": whole.startswith(first)}), flush=True)
h.shutdown()
"""

# `nbdsh` runs the first python3 on PATH, which may lack libnbd's binding.
NBDSH = [SYSTEM_PYTHON, "-m", "nbd"]
