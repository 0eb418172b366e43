"""The zlib encoders a pack entry's stream can be re-encoded with.

Rules:
- An encoder is a pure function of its input bytes, its level and the
  library's version: the same content always gives the same stream (both
  libdeflate and zopfli are deterministic and single-threaded per call).
  The library version is part of the promise: another libdeflate or zopfli
  release may choose other bytes (still valid zlib), so an image is
  reproducible with the same `deflate`/`zopfli` release.
- Every stream is a standard zlib stream (RFC 1950): git's, the OCaml
  docteur's and our readers inflate it unchanged.
- Nothing here is imported at start-up: the libraries are optional extras,
  and `missing()` names the one to install in one line.

`libdeflate` (PyPI `deflate`) at level 12 gets nearly all of zopfli's gain
at a small fraction of its time (the requests pack: 0.968 of git's streams
in 0.44 s, zopfli 0.963 in 35 s), and it releases the GIL while it works.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBDEFLATE = "libdeflate"
ZOPFLI = "zopfli"
LIBDEFLATE_LEVELS = range(1, 13)
MAX_LEVEL = 12  # libdeflate's slowest and smallest
DEFAULT_ZOPFLI_ITERATIONS = 15  # zopfli's own default; fewer is faster and a little bigger

_PACKAGES = {LIBDEFLATE: ("deflate", "deflate"), ZOPFLI: ("zopfli.zlib", "zopfli")}


@dataclass(frozen=True)
class Encoder:
    """One way to write a zlib stream: a library and its level (zopfli: iterations)."""

    library: str
    level: int

    def __post_init__(self) -> None:
        if self.library == LIBDEFLATE:
            if self.level not in LIBDEFLATE_LEVELS:
                raise ValueError(f"libdeflate level {self.level}: must be 1 to 12")
        elif self.library == ZOPFLI:
            if self.level < 1:
                raise ValueError(f"zopfli iterations {self.level}: must be at least 1")
        else:
            raise ValueError(f"unknown zlib encoder {self.library!r}")

    def describe(self) -> str:
        """How progress lines name it: 'libdeflate level 12', 'zopfli, 15 iterations'."""
        if self.library == ZOPFLI:
            return f"zopfli, {self.level} iterations"
        return f"libdeflate level {self.level}"

    def missing(self) -> str | None:
        """The PyPI package to install when the library cannot be imported, else None."""
        module, package = _PACKAGES[self.library]
        try:
            __import__(module)
        except ImportError:
            return package
        return None

    def compress(self, content: bytes) -> bytes:
        """The zlib stream of `content` (header, deflate data, Adler-32)."""
        if self.library == ZOPFLI:
            import zopfli.zlib

            out: bytes = zopfli.zlib.compress(content, numiterations=self.level)
            return out
        import deflate

        return bytes(deflate.zlib_compress(content, self.level))  # it answers a bytearray
