"""The OCaml docteur as a test oracle: build it, run its programs, say what it should see.

`.ci/oracle` builds the OCaml docteur's own programs from
../shared/oracle/ocaml-docteur (cached in _work/ocaml-oracle/ or
$DOCTEUR_ORACLE_DIR); `built()` runs it once per session and fails (never
skips) when the build fails. Then:
- `Oracle.verify(image)`: its `docteur.verify`;
- `Oracle.getall(mode, image, paths)`, `Oracle.list(mode, image, path)`:
  its readers (`unix-fast`; `solo5-light`, `solo5-fast` on a stand-in of
  Solo5's block API) through the Mirage_kv.RO interface;
- `Oracle.ocmake(git_dir, ref, out, block_size)`: its image writer, fed by
  its `dumpobjs.py` with a repository's commit and tree.

`expected_get` and `expected_list` are what each OCaml mode sees of an
image, computed from this project's reader (see docteur_core/make/compat.py
for where the rules come from): they are the model the tests hold the
OCaml programs to, entry by entry.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
ORACLE_SCRIPT = REPO_ROOT / ".ci" / "oracle"
ORACLE_SRC = Path(os.environ.get("DOCTEUR_ORACLE_SRC")
                  or REPO_ROOT.parent / "shared" / "oracle" / "ocaml-docteur")

MODES = ("solo5-light", "unix-fast", "solo5-fast")
LIGHT = "solo5-light"

MODE_FILE, MODE_EXEC, MODE_LINK, MODE_DIR, MODE_GITLINK = (
    0o100644, 0o100755, 0o120000, 0o040000, 0o160000)

_built: Path | None = None


def built() -> Path:
    """The folder holding the OCaml programs, built by .ci/oracle if needed (once)."""
    global _built
    if _built is None:
        proc = subprocess.run(["bash", str(ORACLE_SCRIPT)], capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            raise AssertionError(f".ci/oracle failed (exit {proc.returncode}):\n{proc.stderr}")
        _built = Path(proc.stdout.strip().splitlines()[-1])
    return _built


@dataclass(frozen=True)
class Got:
    ok: bool
    length: int = 0
    sha1: str = ""
    error: str = ""


def got_bytes(data: bytes) -> Got:
    return Got(True, len(data), hashlib.sha1(data).hexdigest())


class Oracle:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.verify_exe = folder / "docteur" / "bin" / "verify.exe"
        self.harness = folder / "harness" / "main.exe"
        self.ocmake_exe = folder / "ocmake" / "ocmake.exe"
        self.dumpobjs = ORACLE_SRC / "dumpobjs.py"

    def verify(self, image: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.verify_exe), str(image)], capture_output=True,
                              timeout=300)

    def run(self, mode: str, image: Path, *verb: str, input: bytes | None = None,
            sector: int | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        if sector is not None:
            env["DOCTEUR_BS"] = str(sector)
        return subprocess.run([str(self.harness), mode, str(image), *verb], input=input,
                              capture_output=True, env=env, timeout=300)

    def getall(self, mode: str, image: Path, paths: list[str],
               sector: int | None = None) -> dict[str, Got]:
        """`get` of every path, as the OCaml reader of `mode` answers."""
        proc = self.run(mode, image, "getall", sector=sector,
                        input="".join(p + "\n" for p in paths).encode())
        assert proc.returncode == 0, (mode, proc.stderr.decode(errors="replace"))
        out: dict[str, Got] = {}
        for line in proc.stdout.decode().splitlines():
            path, status, *rest = line.split("\t")
            if status == "OK":
                out[path] = Got(True, int(rest[0]), rest[1])
            else:
                out[path] = Got(False, error=status + " " + "\t".join(rest))
        assert list(out) == paths, (mode, proc.stdout[:2000])
        return out

    def list(self, mode: str, image: Path, path: str) -> list[tuple[str, str]] | str:
        """(name, kind) of a folder as the OCaml reader lists it, or its error line."""
        proc = self.run(mode, image, "list", path)
        assert proc.returncode == 0, (mode, path, proc.stderr.decode(errors="replace"))
        text = proc.stdout.decode()
        if text.startswith("ERR"):
            return text.strip()
        return [(name.lstrip("/"), kind) for name, kind in
                (line.split("\t") for line in text.splitlines())]

    def ocmake(self, git_dir: Path, ref: str, out: Path, block_size: int) -> str:
        """The OCaml writer's image of `ref` in `git_dir`; returns the commit id."""
        objs = out.with_suffix(".objs")
        proc = subprocess.run(["python3", str(self.dumpobjs), str(git_dir), ref, str(objs)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        commit = proc.stdout.strip()
        proc = subprocess.run([str(self.ocmake_exe), str(objs), commit, str(out),
                               str(block_size)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        objs.unlink()
        return commit


# -- the model: what each OCaml mode sees of an image -------------------------

def sees_file(mode: str, file_mode: int) -> bool:
    """Its light reader gets any blob (a link: its target); its fast one 100644 only."""
    if mode == LIGHT:
        return file_mode in (MODE_FILE, MODE_EXEC, MODE_LINK)
    return file_mode == MODE_FILE


def expected_get(mode: str, nodes: dict[str, int], image, path: str) -> Got | str:
    """What `get path` gives in `mode`: the bytes (as Got) or the error's gist."""
    m = nodes.get(path)
    if m is not None and sees_file(mode, m):
        return got_bytes(image.get(path))
    if m == MODE_DIR and mode == LIGHT:
        return f"ERR /{ocaml_escaped(path)} is not a file"
    if mode == LIGHT and m is None:
        # light.ml's walk stops at the first blob on the way (a file, an
        # executable or a link) with `Value_expected`, before looking further.
        parts = path.split("/")
        prefixes = ("/".join(parts[:i]) for i in range(1, len(parts)))
        if any(nodes.get(p) in (MODE_FILE, MODE_EXEC, MODE_LINK) for p in prefixes):
            return f"ERR /{ocaml_escaped(path)} is not a file"
    return f"ERR /{ocaml_escaped(path)} not found"


def ocaml_escaped(path: str) -> str:
    """A path as the OCaml readers print it in errors (String.escaped: bytes >= 128 as \\ddd)."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}"
                   for b in path.encode("utf-8"))


def expected_list(nodes: dict[str, int], folder: str) -> list[tuple[str, str]]:
    """`list folder` in both modes: 100644 files and folders, nothing else."""
    prefix = folder + "/"
    out = []
    for path, m in nodes.items():
        if path.startswith(prefix) and "/" not in path[len(prefix):]:
            if m == MODE_FILE:
                out.append((path[len(prefix):], "value"))
            elif m == MODE_DIR:
                out.append((path[len(prefix):], "dictionary"))
    return sorted(out)


def check_get(got: Got, expected: Got | str, mode: str, path: str) -> None:
    if isinstance(expected, Got):
        assert got == expected, (mode, path, got, expected)
    else:
        assert not got.ok and got.error == expected, (mode, path, got, expected)
