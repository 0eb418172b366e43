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
import sys
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from docteur_core.reader import Image
from tests.helpers import needs
from tests.helpers.treegen import trees_of


REPO_ROOT = Path(__file__).resolve().parents[2]
ORACLE_SCRIPT = REPO_ROOT / ".ci" / "oracle"
ORACLE_SRC = Path(os.environ.get("DOCTEUR_ORACLE_SRC")
                  or REPO_ROOT.parent / "shared" / "oracle" / "ocaml-docteur")

MODES = ("solo5-light", "unix-fast", "solo5-fast")
LIGHT = "solo5-light"

MODE_FILE, MODE_EXEC, MODE_LINK, MODE_DIR, MODE_GITLINK = (
    0o100644, 0o100755, 0o120000, 0o040000, 0o160000)

_built: Path | None = None


def built() -> Path:
    """The folder holding the OCaml programs, built by .ci/oracle if needed (once).

    Charged to the calling test as needing the `oracle` marker (tests/helpers/needs.py)."""
    global _built
    needs.charge("oracle")
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


# --- what the oracle tests share: a date, hypothesis settings, generated trees,
# --- and the two checks (same verify output; every mode sees the model)

DATE = "2024-05-06T07:08:09+02:00"
EXAMPLES = int(os.environ.get("DOCTEUR_ORACLE_EXAMPLES", "15"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

# Names and contents both implementations read the same way (the OCaml side
# has its own rules for odd names; tests/helpers/treegen.git_trees has git's).
names = st.text(alphabet="abcxyz019-_.é ", min_size=1, max_size=6).filter(
    lambda n: n not in (".", "..") and n.strip() == n and not n.lower().startswith(".git"))
BASE = "".join(f"line {i}: the same long text in several files\n" for i in range(80))
contents = st.one_of(
    st.binary(max_size=200),
    st.integers(0, 40).map(lambda i: (BASE[:i * 50] + f"changed {i}\n" + BASE[i * 50:]).encode()),
)
leaf = st.one_of(
    st.tuples(st.just("file"), contents, st.sampled_from([0o644, 0o755])),
    st.tuples(st.just("link"), st.sampled_from(["a", "../b", "x/y", "/etc/hostname", "é"])),
    st.just(("dir", {})),
)
trees = trees_of(names, leaf, top=4, inner=5, max_leaves=16)


def same_verify(oracle: Oracle, image: Path) -> bytes:
    """Both verifies accept `image` and print the same bytes; returns them."""
    theirs = oracle.verify(image)
    assert theirs.returncode == 0, theirs.stderr
    ours = subprocess.run([sys.executable, "-m", "docteur_core", "verify", str(image)],
                          capture_output=True, timeout=600)
    assert ours.returncode == 0, ours.stderr.decode(errors="replace")
    assert ours.stdout == theirs.stdout
    return ours.stdout


def nodes_of(image: Image) -> dict[str, int]:
    return {n.path: n.mode for n in image.walk()}


def agree(oracle: Oracle, img: Path, sector: int | None = None) -> dict[str, int]:
    """Every OCaml mode sees of `img` exactly what the model says, bytes included."""
    with Image.open(str(img)) as image:
        nodes = nodes_of(image)
        paths = list(nodes) + ["absent", "a/b/absent"]
        for mode in MODES:
            got = oracle.getall(mode, img, paths, sector=sector if mode != "unix-fast" else None)
            for p in paths:
                check_get(got[p], expected_get(mode, nodes, image, p), mode, p)
        for folder in [p for p, m in nodes.items() if m == MODE_DIR]:
            for mode in MODES:
                assert oracle.list(mode, img, folder) == expected_list(nodes, folder), \
                    (mode, folder)
    return nodes
