"""The man pages in man/ are what the argparse definitions say today
(docs/manpages.py writes them): an option changed without regenerating
them fails here, with the command that fixes it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.support import REPO_ROOT


def test_the_man_pages_are_up_to_date():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "docs" / "manpages.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_verb_has_a_page():
    from docteur_core import cli
    verbs = [v for verbs in cli.COMMAND_MODULES.values() for v in verbs]
    pages = {p.name for p in (REPO_ROOT / "man").glob("*.1")}
    assert pages == {"docteur.1", *(f"docteur-{v}.1" for v in verbs)}
    assert "Write a file of an image to stdout" in (REPO_ROOT / "man" / "docteur-cat.1").read_text()
