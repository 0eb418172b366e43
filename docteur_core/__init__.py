"""docteur: directories and Git repositories as read-only disk images.

This package is imported inside minimal guests, so nothing imported from
here (or from the reader modules) may need anything outside the standard
library. The builder (`docteur_core.make`) is the only part that uses
dulwich and the `git` program, and it is imported lazily by the CLI.

Start-up is part of the product: in an emulated guest every millisecond of
imports on a host costs 30-50. So the reader path (`guest`, `reader` and
what they load to `cat` or `ls` a file) imports no `typing`, `dataclasses`,
`re`, `hashlib`, `datetime`, `threading` or `asyncio`: small value classes
use `__slots__` or `collections.namedtuple`, type-only names sit under
`if TYPE_CHECKING:`, and what only some verbs need is imported where it is
used. tests/reader/test_guest_imports.py holds it to that.
"""

__version__ = "0.1.0"
