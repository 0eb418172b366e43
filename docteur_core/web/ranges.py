"""Range requests (RFC 9110 14), sans-IO.

`parse_ranges(header, size)` reads a `Range` value against a body of `size`
bytes:

- None: answer the whole body (200) — the header is not `bytes=` ranges,
  asks for more than MAX_RANGES ranges, or ranges that add up to more
  than the body twice over (overlapping ranges are a way to make a server
  send a file many times: Apache answers them whole too);
- []: none of them can be satisfied (416, `Content-Range: bytes */size`),
  or the ranges are malformed (RFC 9110 allows ignoring or refusing them:
  416, as nginx does);
- else the satisfiable ranges as (first, last) inclusive, in the order
  asked (an unsatisfiable one among others is left out).

`if_range_holds(value, etag, last_modified)`: an `If-Range` that does not
name the current representation (strong ETag, or its exact date) makes
the Range header ignored.
"""

from __future__ import annotations

MAX_RANGES = 64


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    found: list[tuple[int, int]] = []
    asked = 0
    for part in spec.split(","):
        part = part.strip(" \t")
        if not part:
            continue  # empty list elements are allowed
        asked += 1
        if asked > MAX_RANGES:
            return None
        first, dash, last = part.partition("-")
        if not dash:
            return []
        first, last = first.strip(" \t"), last.strip(" \t")
        if not first:  # a suffix: the last N bytes
            if not last.isdigit() or not last.isascii():
                return []
            n = int(last)
            if n == 0 or size == 0:
                continue
            found.append((max(size - n, 0), size - 1))
            continue
        if not first.isdigit() or not first.isascii() \
                or (last and (not last.isdigit() or not last.isascii())):
            return []
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return []  # as nginx: the whole header cannot be satisfied
        if start >= size:
            continue
        found.append((start, min(end, size - 1)))
    if not asked:
        return []
    if sum(b - a + 1 for a, b in found) > 2 * size + 1024:
        return None
    return found


def if_range_holds(value: str, etag: str, last_modified: str) -> bool:
    value = value.strip()
    if value.startswith('"'):
        return value == etag  # strong comparison: a weak tag never holds
    if value.startswith("W/"):
        return False
    return value == last_modified
