"""`docteur demo`: the whole system on a built-in example, in one command.

`site/` is a small static site (text, a nested page, a binary file) that
travels with the package, so that the demo, the README's first command and
the tests have the same default source wherever docteur is installed.
"""

from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"
