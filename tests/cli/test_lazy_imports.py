"""`docteur VERB` imports only the module of VERB: the table in cli.py that
makes this possible must name exactly the verbs each module defines."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

from docteur_core import cli
from tests.helpers.support import REPO_ROOT


def test_the_table_names_each_module_s_verbs():
    for module, verbs in cli.COMMAND_MODULES.items():
        assert tuple(importlib.import_module(module).COMMANDS) == verbs, module


def test_help_lists_every_verb(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for verbs in cli.COMMAND_MODULES.values():
        for verb in verbs:
            assert re.search(rf"\n    {re.escape(verb)}\s", out), verb


def _modules_after(*argv: str) -> set[str]:
    code = ("import sys, json; from docteur_core import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    return set(json.loads(proc.stderr.splitlines()[-1]))


def test_a_reading_verb_imports_neither_builder_nor_boot_nor_verify(tmp_path):
    loaded = _modules_after("cat", str(tmp_path / "absent.img"), "x")
    assert "docteur_core.reader.commands" in loaded
    for other in ("docteur_core.make.command", "docteur_core.boot.command",
                  "docteur_core.verify.command", "docteur_core.serve.command",
                  "docteur_core.mount.command", "docteur_core.diff.command", "dulwich"):
        assert other not in loaded, other


def test_an_unknown_verb_is_refused_with_the_whole_list(capsys):
    try:
        cli.main(["nope"])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "'make'" in err and "'umount'" in err


def test_version_imports_no_verb_and_no_parser():
    """`docteur --version` took 0.2-0.4 s importing every verb to build the
    whole parser; the version needs none of it."""
    loaded = _modules_after("--version")
    ours = {m for m in loaded if m.startswith("docteur_core")}
    assert ours <= {"docteur_core", "docteur_core.cli", "docteur_core.errors"}, ours
    assert "argparse" not in loaded
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "--version"],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    from docteur_core import __version__
    assert (proc.returncode, proc.stdout) == (0, f"docteur {__version__}\n")
