"""Plain, obviously correct decoders: the oracles of the tuned production ones.

`docteur_core.format.pack.apply_delta` and `docteur_core.format.objects.parse_tree_raw`
are tuned for speed (inline varints, unrolled copy instructions, caught
IndexErrors, a regular-expression fast path). These are the same formats
decoded the slow, literal way, one byte and one rule at a time, so that the
property tests compare two different implementations: results, and the
error messages, must be equal on valid and on garbage input.

Tests only: nothing in docteur_core may import this.
"""

from __future__ import annotations

from docteur_core.errors import DamagedImage

# The modes git writes (100664: very old git, group-writable files).
KNOWN_MODES = {0o100644, 0o100755, 0o100664, 0o120000, 0o040000, 0o160000}


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    """A delta header size: at most 10 bytes, 7 bits each, the last one's high bit clear."""
    for end in range(pos, min(pos + 10, len(data))):
        if not data[end] & 0x80:
            value = sum((data[i] & 0x7F) << 7 * (i - pos) for i in range(pos, end + 1))
            return value, end + 1
    raise DamagedImage("truncated size in delta header", where)


def apply_delta(base: bytes, delta: bytes, where: str,
                max_size: int = 512 << 20) -> bytes:
    """Rebuild an object from its base and a git delta, checking every step."""
    src_size, pos = _varint(delta, 0, where)
    dst_size, pos = _varint(delta, pos, where)
    if src_size != len(base):
        raise DamagedImage(f"delta expects a base of {src_size} bytes, base has {len(base)}",
                           where)
    if dst_size > max_size:
        raise DamagedImage(f"delta result of {dst_size} bytes is over the limit of {max_size}",
                           where)
    out = bytearray()
    n = len(delta)
    while pos < n:
        op = delta[pos]
        pos += 1
        if op & 0x80:
            # Bits 0-3 say which offset bytes follow, bits 4-6 which size bytes.
            fields = [0, 0]
            for bit in range(7):
                if op >> bit & 1:
                    if pos >= n:
                        raise DamagedImage("truncated copy instruction in delta", where)
                    fields[bit // 4] |= delta[pos] << 8 * (bit % 4)
                    pos += 1
            off, size = fields
            if size == 0:
                size = 0x10000
            if off + size > src_size:
                raise DamagedImage(
                    f"delta copies {size} bytes at {off}, outside a base of {src_size}", where)
            out += base[off:off + size]
        elif op:
            if pos + op > n:
                raise DamagedImage("truncated insert instruction in delta", where)
            out += delta[pos:pos + op]
            pos += op
        else:
            raise DamagedImage("reserved delta instruction 0", where)
        if len(out) > dst_size:
            raise DamagedImage("delta result larger than declared", where)
    if len(out) != dst_size:
        raise DamagedImage(f"delta result is {len(out)} bytes, {dst_size} declared", where)
    return bytes(out)


def parse_tree(data: bytes, where: str) -> list[tuple[int, bytes, bytes]]:
    """(mode, raw id, raw name) of each entry, or DamagedImage for the first bad one."""
    entries = []
    seen = set()
    rest = bytes(data)
    while rest:
        if b" " not in rest[:8]:  # a mode is at most 7 octal digits
            raise DamagedImage("tree entry without a mode", where)
        mode_text, _, rest = rest.partition(b" ")
        if not mode_text or mode_text.strip(b"01234567"):
            raise DamagedImage(f"tree entry with a bad mode {mode_text!r}", where)
        mode = int(mode_text, 8)
        if mode not in KNOWN_MODES:
            raise DamagedImage(f"tree entry with unknown mode {mode:o}", where)
        name, nul, rest = rest.partition(b"\0")
        if not nul or len(rest) < 20:
            raise DamagedImage("truncated tree entry", where)
        if name in (b"", b".", b"..") or b"/" in name:
            raise DamagedImage(f"tree entry with an illegal name {name!r}", where)
        if name in seen:
            raise DamagedImage(f"tree lists {name!r} twice", where)
        seen.add(name)
        entries.append((mode, rest[:20], name))
        rest = rest[20:]
    return entries
