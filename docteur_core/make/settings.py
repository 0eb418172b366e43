"""`MakeOptions`: every choice of a build, one frozen value.

Same source, same `MakeOptions` (and, with `base`, the same base image):
the same image, byte for byte. `jobs` is here although it never changes
the bytes (see `parallel`), so that one value describes a whole build.
`make_image`'s docstring says what each field does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..format import layout
from ..format.limits import MAX_FILE_SIZE


@dataclass(frozen=True)
class MakeOptions:
    branch: str | None = None  # a repository's REF (default: HEAD)
    date: str | None = None  # a directory's commit date (RFC 3339)
    author: str | None = None  # a directory's author, "Name <email>"
    message: str | None = None  # a directory's commit message
    block_size: int = layout.DEFAULT_BLOCK_SIZE
    compat: str | None = None  # "ocaml": what the OCaml docteur reads completely
    path_index: bool = True  # append docteur's path index region
    max_object_size: int = MAX_FILE_SIZE
    compress: str = "default"  # or "max" (the `max` extra), "zopfli" (the `zopfli` extra)
    zopfli_iterations: int | None = None
    excludes: tuple[str | bytes, ...] = field(default=())  # gitignore patterns
    gitignore: bool = False  # honour a directory's .gitignore files
    jobs: int | None = None  # concurrent `git pack-objects` (default: the cores)
    sign: str | os.PathLike[str] | None = None  # an SSH key signing a directory's commit
    base: str | os.PathLike[str] | None = None  # an earlier image to reuse

    def __post_init__(self) -> None:
        # A list given for `excludes` (argparse's append) is kept as a tuple:
        # the value stays hashable and nobody changes it under the build.
        if not isinstance(self.excludes, tuple):
            object.__setattr__(self, "excludes", tuple(self.excludes))
