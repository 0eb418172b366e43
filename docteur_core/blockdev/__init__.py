"""Where an image's sectors come from: files and raw devices, memory, NBD.

`block` is the block interface the reader needs (aligned reads only, as
Solo5 and virtio-blk give) with a sector cache and a byte-range adapter;
`nbd_protocol` is the NBD client protocol without I/O, `nbd_client` its
asyncio shell; `device.open_device` picks one from a path or URI.
"""
