"""`docteur ls` shows every name on one line, exactly as `git ls-tree` does
(core.quotePath=false): git is the oracle, on a repository with hostile names."""

from __future__ import annotations

import os
import subprocess
import sys

from docteur_core.make import make_image

from tests.helpers.support import REPO_ROOT, git

NAMES = [b"plain.txt", b"caf\xc3\xa9.txt", b"new\nline", b"tab\there", b'quote"d',
         b"back\\slash", b"bell\x07", b"del\x7f", b"latin1-\xe9", b" lead and trail ",
         b"esc\x1b[31mred"]


def test_ls_names_match_git_ls_tree(tmp_path):
    repo = tmp_path / "repo"
    git("init", "-q", str(repo))
    for name in NAMES:
        with open(os.path.join(os.fsencode(repo), name), "wb") as f:
            f.write(b"content of " + name)
    (repo / "sub\ndir").mkdir()
    (repo / "sub\ndir" / "x").write_text("x")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "odd names", cwd=repo)
    make_image(repo, tmp_path / "names.img")

    expected = git("-c", "core.quotePath=false", "ls-tree", "HEAD", cwd=repo).splitlines()
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "ls", str(tmp_path / "names.img")],
                          capture_output=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.splitlines()
    # ours marks directories with a trailing /, git does not
    assert [line[:-1] if line.startswith(b"040000") else line for line in got] == expected
    assert len(got) == len(NAMES) + 1  # one line per entry, whatever the name

    tree = subprocess.run([sys.executable, "-m", "docteur_core", "tree",
                           str(tmp_path / "names.img")], capture_output=True, cwd=REPO_ROOT)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert b'|-- "new\\nline"' in lines
    at = lines.index(b'|-- "sub\\ndir"/')  # a directory, not the last entry
    assert lines[at + 1] == b"|   `-- x"
