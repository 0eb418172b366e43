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

from docteur_core.format import layout
from tests.helpers.support import PLUGIN, git

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


def delta_commit_image(image: Path, ofs_delta: bool = True) -> dict:
    """An image whose header names a commit that git stored as a delta.

    Two commits with one long message (the parent's slightly longer, so git
    makes it the delta): the plugin must follow the chain to describe it.
    Returns {"commit": hex of the delta, "tree": hex, "kind": "OFS"/"REF"}.
    """
    message = "".join(f"line {i} of a long commit message\n" for i in range(200))
    with tempfile.TemporaryDirectory(prefix="deltacommit-") as tmp:
        env = {"GIT_DIR": os.path.join(tmp, "repo.git")}
        git("init", "-q", "--bare", env["GIT_DIR"])
        tree = git("mktree", input=b"", env=env).decode().strip()
        first = git("commit-tree", tree, "-m", message + "and a longer tail " * 20,
                    env=env).decode().strip()
        second = git("commit-tree", tree, "-p", first, "-m", message, env=env).decode().strip()
        base = os.path.join(tmp, "pack")
        git("pack-objects", "-q", "--revs", "--threads=1",
            *(["--delta-base-offset"] if ofs_delta else []), base,
            input=second.encode() + b"\n", env=env)
        stem = next(Path(tmp).glob("pack-*.pack")).with_suffix("")
        listing = git("verify-pack", "-v", str(stem) + ".idx", env=env).decode()
        deltas = [line.split()[0] for line in listing.splitlines()
                  if " commit " in line and len(line.split()) == 7]
        assert len(deltas) == 1, listing
        pack, idx = stem.with_suffix(".pack").read_bytes(), stem.with_suffix(".idx").read_bytes()
    idx_offset, size = layout.image_layout(len(pack), len(idx), 512)
    data = bytearray(size)
    data[:layout.HEADER_SIZE] = layout.encode_header(bytes.fromhex(deltas[0]), idx_offset)
    data[layout.PACK_OFFSET:layout.PACK_OFFSET + len(pack)] = pack
    data[idx_offset:idx_offset + len(idx)] = idx
    image.write_bytes(bytes(data))
    return {"commit": deltas[0], "tree": tree, "kind": "OFS" if ofs_delta else "REF"}


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

# {export name: description} as the server lists them, opening none of them.
LIST_EXPORTS = r"""
import json, sys, nbd
p = json.load(sys.stdin)
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(p["uri"])
out = {}
h.opt_list(lambda name, description: out.__setitem__(name, description))
h.opt_abort()
print(json.dumps(out))
"""

# `nbdsh` runs the first python3 on PATH, which may lack libnbd's binding.
NBDSH = [SYSTEM_PYTHON, "-m", "nbd"]
