"""The house's rule, checked on the source: arrows only go down.

`format` and `blockdev` are the pure ground floor: they import the standard
library, each other where needed (blockdev may use format; format uses
nothing of docteur but `errors`), and `errors`. The reader, which a guest
runs with nothing but the standard library, adds only those two. No stage
reaches up into `cli`, `options` or `trust`, which are the host's shell.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.support import REPO_ROOT

PACKAGE = REPO_ROOT / "docteur_core"

# What each lower room may import of docteur (besides itself).
ALLOWED = {
    "format": {"errors"},
    "blockdev": {"errors", "format"},
    "reader": {"errors", "format", "blockdev"},
}
# Top-level modules that only the host's shell may import.
SHELL = {"cli", "options", "trust", "verbparser"}


def docteur_imports(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """The first-level docteur names `path` imports (relative or absolute);
    `package` is where it sits in docteur_core (by default, where it is)."""
    tree = ast.parse(path.read_text(), str(path))
    if package is None:
        package = path.relative_to(PACKAGE).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [alias.name for alias in node.names]
                if not parts:
                    found.update(alias.name.split(".")[0] for alias in node.names)
                else:
                    found.update(names)
            elif node.module and node.module.startswith("docteur_core."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("docteur_core."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_lower_room_imports_nothing_above_it(room):
    wrong = {}
    for path in sorted((PACKAGE / room).rglob("*.py")):
        above = docteur_imports(path) - ALLOWED[room] - {room}
        if above:
            wrong[str(path.relative_to(REPO_ROOT))] = sorted(above)
    assert not wrong, wrong


def test_no_stage_imports_the_shell():
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:  # the shell itself, errors, progress, children
            continue
        reached = docteur_imports(path) & SHELL
        # A stage's verb module parses its command line with the shared options,
        # and a host reading verb opens images under the trust rules.
        if rel.name in ("command.py", "extract.py", "options.py") or rel.parts[0] == "files":
            reached -= {"options", "trust"}
        if reached:
            wrong[str(rel)] = sorted(reached)
    assert not wrong, wrong


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    # The rules would pass on a checker that finds nothing: show it finds
    # each form of import a module of the reader could use to reach up.
    sample = tmp_path / "sample.py"
    sample.write_text("from ..trust import open_image\n"
                      "from .. import options\n"
                      "from .image import Image\n"
                      "def later():\n    import docteur_core.serve.plugin\n")
    found = docteur_imports(sample, ("reader",))
    assert {"trust", "options", "reader", "serve"} <= found
    assert docteur_imports(PACKAGE / "reader" / "image.py") >= {"format"}
