"""The typed public API: mypy finds no error in the package, every module
is held to --strict's checks, a user's code that uses it
type-checks (and a wrong use does not), and the reader's lazy names are
visible to dir() and pydoc while staying lazy at run time.

mypy runs as `python -m mypy` with the configuration in pyproject.toml
([tool.mypy]: strict on every module); it comes with the test extra,
so a missing mypy fails here rather than skipping. Its cache goes to a
temporary folder shared by the module's runs: the repository gets no
`.mypy_cache`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module's runs (the standard library's stubs are
    analysed once), outside the repository."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(*args: str, cache: Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_package_has_no_type_error(cache):
    proc = _mypy(cache=cache)  # pyproject's [tool.mypy]: the package
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout, proc.stdout


# mypy's --strict, as pyproject.toml spells it for the strict modules.
STRICT_FLAGS = ("disallow_untyped_defs", "disallow_incomplete_defs", "disallow_untyped_calls",
                "disallow_untyped_decorators", "disallow_any_generics",
                "disallow_subclassing_any", "check_untyped_defs", "warn_return_any",
                "no_implicit_reexport", "strict_equality")
# Not strict yet: default checks only (none left: issue 22 made format strict).
NOT_YET: tuple[str, ...] = ()
# What the issue names as public: strict whatever else changes.
PUBLIC = ("docteur_core.reader", "docteur_core.make", "docteur_core.verify",
          "docteur_core.blockdev", "docteur_core.serve", "docteur_core.serve.plugin")


def _strict_patterns() -> list[str]:
    """The module patterns of pyproject's overrides that set every strict flag."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return [pattern for override in config.get("overrides", [])
            if all(override.get(flag) is True for flag in STRICT_FLAGS)
            for pattern in override["module"]]


def _matches(name: str, pattern: str) -> bool:
    """mypy's override patterns: `a.b` is that module, `a.b.*` it and those under it."""
    if pattern.endswith(".*"):
        return name == pattern[:-2] or name.startswith(pattern[:-1])
    return name == pattern


def _package_modules() -> list[str]:
    names = []
    for path in sorted((REPO_ROOT / "docteur_core").rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_is_strict():
    patterns = _strict_patterns()
    modules = _package_modules()
    assert "docteur_core.serve.plugin" in modules and len(modules) > 100, modules
    left_out = [name for name in modules
                if not any(_matches(name, p) for p in patterns)
                and not any(_matches(name, f"{top}.*") for top in NOT_YET)]
    assert left_out == []
    assert [name for name in PUBLIC if not any(_matches(name, p) for p in patterns)] == []


# What a user writes: a device of their own (no base class to inherit),
# the devices docteur opens, the reader's names from the package's face.
USER_CODE = '''
from docteur_core.blockdev.block import FileDevice, SectorCache
from docteur_core.blockdev.device import open_device
from docteur_core.make import make_image
from docteur_core.reader import CommitInfo, Image, Node, Stat
from docteur_core.verify import Report, verify_image


class Zeros:
    block_size = 512
    capacity = 4096

    def read(self, offset: int, length: int) -> bytes:
        return bytes(min(length, max(0, self.capacity - offset)))

    def close(self) -> None:
        pass


def check(path: str) -> bool:
    report: Report = verify_image(open_device(path))
    verify_image(FileDevice(path), quick=True)
    verify_image(SectorCache(Zeros()))
    return report.ok


def read(path: str) -> tuple[bytes, list[str], int, str]:
    make_image("site", path)
    with Image.open(path) as image:
        data: bytes = image.get("index.html")
        names = [node.path for node in image.walk() if node.mode != 0o40000]
        first: Node = image.entries("")[0]
        stat: Stat = image.stat("index.html")
        commit: CommitInfo = image.commit
        return data, names, stat.size + (first.offset or 0), commit.tree
'''

# The same calls with the types wrong: each line must be refused.
WRONG_CODE = '''
from docteur_core.blockdev.device import open_device
from docteur_core.reader import Image
from docteur_core.verify import verify_image

verify_image("disk.img")
with Image.open("disk.img") as image:
    text: str = image.get("index.html")
    size: str = image.stat("index.html").size
open_device(b"disk.img")
from docteur_core.reader import Imagee
'''


def test_a_users_code_type_checks_strictly(tmp_path, cache):
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE))
    proc = _mypy("--strict", "--follow-imports=silent", "--config-file=", "user.py",
                 cache=cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_use_is_refused(tmp_path, cache):
    (tmp_path / "wrong.py").write_text(textwrap.dedent(WRONG_CODE))
    proc = _mypy("--follow-imports=silent", "--config-file=", "wrong.py",
                 cache=cache, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in lines] == ["6", "8", "9", "10", "11"], proc.stdout


def test_the_readers_names_are_visible_and_lazy():
    code = textwrap.dedent('''
        import sys
        import docteur_core.reader as reader
        names = dir(reader)
        lazy = "docteur_core.reader.image" not in sys.modules
        import pydoc
        text = pydoc.render_doc(reader, renderer=pydoc.plaintext)
        from docteur_core.reader import image
        print(lazy, all(n in names for n in reader.__all__),
              "class Image(" in text, reader.Image is image.Image, reader.Node is image.Node)
    ''')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-S", "-c", code], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"] * 5
