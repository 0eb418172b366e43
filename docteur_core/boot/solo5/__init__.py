"""A Solo5 unikernel that reads files out of a docteur image.

Why: docteur images are made for unikernels. The OCaml docteur is read by
MirageOS unikernels through Solo5's block API, which only reads whole,
aligned blocks, one per call. The QEMU guest (docteur_core.boot, docteur_core.reader.guest)
shows a Linux guest reading an image; this package shows the other end: a
guest with no operating system and no C library, built on Solo5 alone, that
reads a file the way the OCaml light mode does (header, IDX binary search,
zlib, deltas, trees) through `solo5_block_read`.

- guest/: the unikernel's C sources (freestanding; zlib built with Z_SOLO
  from Debian's zlib source) with its manifest and GNUmakefile.
- toolchain.py: builds Solo5's tenders (solo5-spt, solo5-hvt) and the guest for
  both, from Solo5's source tarball, into a cache keyed by the inputs.
- runner.py: runs the guest on an image file or an NBD export (through
  nbdfuse), optionally serving a file with the project's nbdkit plugin
  first, and returns exactly what the guest printed.
- command.py: `docteur boot --solo5 spt|hvt|auto IMAGE cat|sha256 PATH`.

Trust: the guest checks every object it reads (the commit, each tree on the
path, the file) against its git id, back to the header's commit, and the
file whole before printing a byte; `commit=` pins the commit (a local
image's, read with `image_commit`, is what `docteur boot --solo5` pins),
`verify=False` skips the hashing.

    from docteur_core.boot import solo5
    tenders, unikernels = solo5.build()
    status, out, err = solo5.run("disk.img", "cat", "index.html", tender="spt",
                                 commit=solo5.image_commit("disk.img"))
"""

from .toolchain import Built, Solo5Error, build, cache_root, find_solo5_source
from .runner import (RunResult, VERBS, TENDER_CHOICES, image_commit, parse_console, run,
                     run_many)

__all__ = ["Built", "RunResult", "Solo5Error", "TENDER_CHOICES", "VERBS", "build",
           "cache_root", "find_solo5_source", "image_commit", "parse_console", "run",
           "run_many"]
