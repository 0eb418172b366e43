"""Hypothesis trees for the tests: a folder as a nested dict, and the code
that writes one to disk. Each test module picks its own names, contents and
link targets (what git accepts, what the OCaml peer can read); the shape and
the writing are shared here.

A tree is {name: node}; a node is ("file", bytes, mode), ("link", target)
or ("dir", {children}). Names and targets may be str or bytes.
"""

from __future__ import annotations

import os

from hypothesis import strategies as st


def trees_of(names, leaf, *, top: int, inner: int, max_leaves: int):
    """Nested folders: at most `top` entries at the root, `inner` below."""
    return st.recursive(
        st.dictionaries(names, leaf, max_size=top),
        lambda children: st.dictionaries(
            names, st.one_of(leaf, children.map(lambda d: ("dir", d))), max_size=inner),
        max_leaves=max_leaves,
    )


def source_of(spec: dict, folder) -> "Path":
    """The tree `spec` written as a new folder `src` inside `folder`."""
    from pathlib import Path

    src = Path(folder) / "src"
    src.mkdir()
    materialise(src, spec)
    return src


def materialise(root, spec: dict) -> None:
    """Write the tree `spec` under the existing folder `root`."""
    root = os.fsencode(root)
    for name, node in spec.items():
        path = os.path.join(root, os.fsencode(name))
        if node[0] == "file":
            with open(path, "wb") as f:
                f.write(node[1])
            os.chmod(path, node[2])
        elif node[0] == "link":
            os.symlink(node[1], path)
        else:
            os.mkdir(path)
            materialise(path, node[1])
