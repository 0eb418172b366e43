"""Hypothesis trees for the tests: a folder as a nested dict, and the code
that writes one to disk. Each test module picks its own names, contents and
link targets (what git accepts, what the OCaml peer can read); the shape and
the writing are shared here.

A tree is {name: node}; a node is ("file", bytes, mode), ("link", target)
or ("dir", {children}). Names and targets may be str or bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import strategies as st

# The date of the images built from `git_trees` (and of the mount tests'
# expectations, which depend on it).
GENERATED_DATE = "2026-01-01T00:00:00Z"


def trees_of(names, leaf, *, top: int, inner: int, max_leaves: int):
    """Nested folders: at most `top` entries at the root, `inner` below."""
    return st.recursive(
        st.dictionaries(names, leaf, max_size=top),
        lambda children: st.dictionaries(
            names, st.one_of(leaf, children.map(lambda d: ("dir", d))), max_size=inner),
        max_leaves=max_leaves,
    )


def source_of(spec: dict, folder) -> Path:
    """The tree `spec` written as a new folder `src` inside `folder`."""
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


# --- trees git itself records the same way: any name git add keeps --------

_ODD = ["-dash", " lead space", "trail space ", "new\nline", "back\\slash", "tab\there",
        "quote\"'", "star*?[", "été", "日本語", "emoji 🎉", "#hash", "~tilde", "a:b", "%41"]
_name_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1, max_size=12)
_name_bytes = st.binary(min_size=1, max_size=8).map(lambda b: b.replace(b"/", b"_")
                                                    .replace(b"\0", b"_"))
names = st.one_of(
    st.sampled_from(_ODD).map(str.encode),
    _name_text.map(lambda s: s.encode("utf-8")),
    _name_text.map(lambda s: ("." + s).encode("utf-8")),  # hidden
    _name_bytes,  # not necessarily UTF-8: legal on Linux
).filter(lambda n: n not in (b".", b"..") and len(n) <= 255
          # git add refuses these (.git and what NTFS would take for it): not comparable
          and not n.lower().startswith((b".git", b"git~", b"gitmod~")))

contents = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"same content\n"]),
                     st.text(max_size=200).map(str.encode))
targets = st.one_of(
    st.sampled_from([b"/etc/passwd", b"../../outside", b"../../../../../../tmp", b"dangling",
                     b"a/b/c", b"."]),
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\0", b"x")),
)
file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o744, 0o654, 0o700, 0o444])

leaf = st.one_of(
    st.tuples(st.just("file"), contents, file_modes),
    st.tuples(st.just("link"), targets),
    st.just(("dir", {})),  # empty directory
)
git_trees = trees_of(names, leaf, top=5, inner=6, max_leaves=25)
