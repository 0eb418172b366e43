"""Running the `docteur` command as a user would: a real child process.

`docteur()` runs `python -m docteur_core VERB ...` with this interpreter and
returns the completed process; `refusal()` checks the project's promise for
a refused command (exit 1, nothing on stdout, one line on stderr and no
traceback) and returns that line.
"""

from __future__ import annotations

import os
import subprocess
import sys

DOCTEUR = [sys.executable, "-m", "docteur_core"]


def docteur(*args, env: dict | None = None, timeout: float = 120, cwd=None,
            text: bool = False) -> subprocess.CompletedProcess:
    """`docteur ARGS...`, its output captured (bytes, or str with `text`);
    `env` adds to this environment."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, timeout=timeout,
                          env=full, cwd=cwd, text=text)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed (exit 1, empty stdout, no traceback)."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert proc.stdout == b""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()
