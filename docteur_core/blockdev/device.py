"""Turn what a user typed (a path or an NBD URI) into a cached block device.

The command line, the guest entry point and `verify` all accept either an
image file / raw device, an `nbd://` / `nbd+unix://` URI or an `http(s)://`
URL (blockdev/http.py); this is the one place that tells them apart. The NBD client (asyncio) is imported only when
an URI is given, so opening a file stays cheap in a minimal guest.
"""

from __future__ import annotations

from .block import BlockDevice, FileDevice, SectorCache

NBD_SCHEMES = ("nbd:", "nbds:", "nbd+unix:", "nbds+unix:", "nbd+vsock:", "nbds+vsock:")


def is_nbd_uri(spec: str) -> bool:
    return spec.lower().startswith(NBD_SCHEMES)


def open_raw_device(spec: str, block_size: int | None = None, *,
                    pinned: bool = False) -> BlockDevice:
    """The backend for `spec`, without a cache.

    `pinned`: the caller checks what it reads against a commit it was given
    (`Image.open(..., commit=ID)`, --commit ID). Only an http(s) origin
    cares: one that sends neither ETag nor Last-Modified is read only then.
    """
    if is_nbd_uri(spec):
        from .nbd_client import NbdDevice

        return NbdDevice(spec, block_size=block_size)
    if spec[:6].lower().startswith(("http:", "https:")):
        from .http import HttpDevice

        return HttpDevice(spec, block_size=block_size, pinned=pinned)
    device = FileDevice(spec, block_size=block_size)
    if device.capacity == 0:
        _refuse_a_device_with_no_size(device, spec)
    return device


def _refuse_a_device_with_no_size(device: FileDevice, spec: str) -> None:
    """/dev/zero or /dev/null as an image: lseek says 0 bytes, and the
    not-an-image rule would call it "an empty file". Say what it is. (An
    empty regular file, or a block device of size 0, is left to the rule.)"""
    import os
    import stat

    from ..errors import DeviceError

    mode = os.stat(spec).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return
    kind = ("a character device" if stat.S_ISCHR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    device.close()
    raise DeviceError(f"{spec}: not a docteur image ({kind} with no size)")


def open_device(spec: str, block_size: int | None = None, *,
                cache_blocks: int | None = None, readahead: int = 0,
                pinned: bool = False) -> SectorCache:
    """A path, an NBD URI or an http(s) URL, opened read-only, behind a sector cache.

    `pinned`: the reader will refuse any image but a pinned commit's (an
    HTTP origin that cannot say whether its file changed is read only then).

    No readahead by default: `ByteReader` already turns sequential reads
    into growing windows, and random probes should cost one sector each.
    `pinned` as for `open_raw_device`.
    Raises `DeviceError` (a `DocteurError`) when the device cannot be opened.
    """
    return SectorCache(open_raw_device(spec, block_size, pinned=pinned),
                       max_blocks=cache_blocks, readahead=readahead)
