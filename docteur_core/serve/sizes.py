"""The sizes nbdkit's cache filter takes for cache-max-size, as a pure rule.

`docteur serve --cache-size SIZE` hands SIZE to nbdkit unchanged; checking
it here first makes a typo a usage error of `docteur serve` (exit 2, its
usage line) instead of nbdkit's words after the image was checked. The rule
is nbdkit's `nbdkit_parse_size` (decimal digits, then at most one of
b k m g t p e, powers of 1024, or s, 512-byte sectors, in either case;
at most 2**63 - 1 bytes) and the cache filter's own floor of 1 MiB
("cache-max-size is too small"), measured on nbdkit 1.32 and checked
against the real nbdkit by tests/serve/test_cache_sizes.py. A leading blank or
'+', which nbdkit's strtoimax lets through, is refused here: nobody means it.
"""

from __future__ import annotations

import re

# Bytes per unit of each suffix nbdkit knows ("" for plain bytes).
SUFFIXES = {"": 1, "b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30,
            "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
CACHE_MIN = 1 << 20  # the cache filter refuses less
INT64_MAX = (1 << 63) - 1

_SIZE = re.compile(r"([0-9]+)([A-Za-z]?)", re.ASCII)


def cache_size_problem(text: str) -> str | None:
    """Why nbdkit's cache filter would refuse `text` as cache-max-size, in a
    few words, or None when it takes it."""
    m = _SIZE.fullmatch(text)
    if m is None or m.group(2).lower() not in SUFFIXES:
        return ("not a size: whole bytes, or a number followed by K, M, G, T, P, E "
                "(powers of 1024) or S (512-byte sectors), e.g. 64M or 1G")
    count = int(m.group(1))
    if count > INT64_MAX or count * SUFFIXES[m.group(2).lower()] > INT64_MAX:
        return "too big: nbdkit takes at most 2**63 - 1 bytes"
    if count * SUFFIXES[m.group(2).lower()] < CACHE_MIN:
        return "too small: nbdkit's cache filter needs at least 1M"
    return None
