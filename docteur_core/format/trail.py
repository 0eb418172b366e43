"""Where a depth-first walk of trees is, without a string per pending tree.

A walk that pushed each subtree with its full path would hold, for trees
nested d deep, d paths of up to d components at once: quadratic memory,
400 MB for a hostile image 20,000 trees deep. A `Trail` keeps one
(parent, name) pair per pushed tree and spells a path only when one is
needed (an error message).
"""

from __future__ import annotations


class Trail:
    __slots__ = ("_parents", "_names")

    def __init__(self, root: str = "") -> None:
        self._parents = [-1]
        self._names = [root]

    def child(self, parent: int, name: str) -> int:
        """A new position: `name` inside the directory at `parent`."""
        self._parents.append(parent)
        self._names.append(name)
        return len(self._names) - 1

    def path(self, at: int) -> str:
        """The '/'-joined path of a position (the root's name first, if any)."""
        parts = []
        while at >= 0:
            parts.append(self._names[at])
            at = self._parents[at]
        return "/".join(p for p in reversed(parts) if p)
