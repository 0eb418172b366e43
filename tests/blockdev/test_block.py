"""The block interface: memory and file backends, the sector cache, byte ranges."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.blockdev.block import (
    BlockDevice, ByteReader, DeviceError, FileDevice, MemoryDevice, SectorCache, read_bytes,
)
from docteur_core.blockdev.device import is_nbd_uri, open_device
from docteur_core.errors import DocteurError

BLOCK_SIZES = st.sampled_from([1, 4, 16, 64, 512])


def pattern(n: int, seed: int = 0) -> bytes:
    """Bytes where every position is distinguishable from its neighbours."""
    return bytes((i * 131 + (i >> 8) * 7 + seed) & 0xFF for i in range(n))


def assert_aligned(reads, block_size):
    for offset, length in reads:
        assert offset % block_size == 0 and length % block_size == 0, (offset, length)


# -- MemoryDevice ---------------------------------------------------------------

def test_memory_device_is_a_block_device():
    dev = MemoryDevice(b"x" * 1024)
    assert isinstance(dev, BlockDevice)
    assert (dev.block_size, dev.capacity) == (512, 1024)


@pytest.mark.parametrize("offset,length", [(1, 512), (0, 511), (-512, 512), (512, -512)])
def test_memory_device_rejects_misaligned_reads(offset, length):
    with pytest.raises(ValueError, match="misaligned"):
        MemoryDevice(bytes(2048)).read(offset, length)


def test_memory_device_short_at_end():
    data = pattern(1000)
    dev = MemoryDevice(data)
    assert dev.read(512, 1024) == data[512:]
    assert dev.read(1024, 512) == b""
    assert dev.read(4096, 512) == b""
    assert dev.read(0, 0) == b""


def test_bad_block_sizes():
    for bad in (0, -512, 3, 513, 1.5):
        with pytest.raises(ValueError):
            MemoryDevice(b"", block_size=bad)


# -- ByteReader over a cache over memory ---------------------------------------

@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 5000), block_size=BLOCK_SIZES,
       max_blocks=st.integers(1, 40), readahead=st.integers(0, 5),
       bypass=st.integers(1, 50),
       ranges=st.lists(st.tuples(st.integers(0, 5200), st.integers(0, 700)), max_size=40))
def test_random_ranges_equal_slices(size, block_size, max_blocks, readahead, bypass, ranges):
    data = pattern(size, seed=size)
    dev = MemoryDevice(data, block_size)
    cache = SectorCache(dev, max_blocks=max_blocks, readahead=readahead, bypass_blocks=bypass)
    reader = ByteReader(cache)
    for offset, length in ranges:
        assert reader.pread(offset, length) == data[offset:offset + length]
        assert len(cache) <= max_blocks
    assert_aligned(dev.reads, block_size)
    assert cache.device_reads == len(dev.reads)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 3000), block_size=BLOCK_SIZES,
       ranges=st.lists(st.tuples(st.integers(0, 3100), st.integers(0, 400)), max_size=30))
def test_byte_reader_without_cache(size, block_size, ranges):
    data = pattern(size, seed=3)
    dev = MemoryDevice(data, block_size)
    reader = ByteReader(dev)
    for offset, length in ranges:
        assert reader.pread(offset, length) == data[offset:offset + length]
        assert read_bytes(dev, offset, length) == data[offset:offset + length]
    assert_aligned(dev.reads, block_size)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 4000), block_size=BLOCK_SIZES,
       reads=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 12)), max_size=30))
def test_cache_read_equals_device_read(size, block_size, reads):
    """SectorCache.read itself (aligned, multi-block) returns what the device does."""
    data = pattern(size, seed=7)
    dev = MemoryDevice(data, block_size)
    cache = SectorCache(dev, max_blocks=8, readahead=2, bypass_blocks=6)
    for block, count in reads:
        offset, length = block * block_size, count * block_size
        assert cache.read(offset, length) == data[offset:offset + length]
        assert len(cache) <= 8


def test_cache_one_device_read_per_sector():
    """Many small reads in a few sectors: one device read for each sector."""
    data = pattern(64 * 512)
    dev = MemoryDevice(data)
    cache = SectorCache(dev, max_blocks=64)
    reader = ByteReader(cache)
    touched = set()
    for k in range(2000):
        offset = (k * 7919) % (len(data) - 20)
        assert reader.pread(offset, 20) == data[offset:offset + 20]
        touched.update({offset // 512, (offset + 19) // 512})
    # every touched sector came from the device exactly once
    fetched = [off // 512 + k for off, length in dev.reads for k in range(length // 512)]
    assert sorted(fetched) == sorted(touched)
    assert cache.device_reads == len(dev.reads) <= len(touched)


def test_cache_fetches_runs_of_missing_sectors_at_once():
    dev = MemoryDevice(pattern(16 * 512))
    cache = SectorCache(dev, max_blocks=16, bypass_blocks=16)
    cache.read(512, 512)
    cache.read(5 * 512, 512)
    dev.reads.clear()
    assert cache.read(0, 8 * 512) == dev.data[:8 * 512]
    # blocks 0, 2-4 and 6-7 were missing: three runs, three device reads
    assert dev.reads == [(0, 512), (1024, 3 * 512), (3072, 2 * 512)]


def test_cache_is_lru():
    dev = MemoryDevice(pattern(8 * 512))
    cache = SectorCache(dev, max_blocks=2)
    cache.read(0, 512)
    cache.read(512, 512)
    cache.read(0, 512)          # 0 is now the most recent
    cache.read(1024, 512)       # evicts 1
    dev.reads.clear()
    cache.read(0, 512)
    assert dev.reads == []
    cache.read(512, 512)
    assert dev.reads == [(512, 512)]
    assert len(cache) == 2


def test_cache_readahead_only_for_streams():
    dev = MemoryDevice(pattern(64 * 512))
    cache = SectorCache(dev, max_blocks=100, readahead=8)
    cache.read(10 * 512, 512)
    cache.read(3 * 512, 512)                 # random probes: no readahead
    assert dev.reads == [(10 * 512, 512), (3 * 512, 512)]
    for i in range(4, 40):                   # a stream from block 3 on
        cache.read(i * 512, 512)
    sizes = [length // 512 for _, length in dev.reads[2:]]
    # the window grows to its maximum; the cached block 10 does not end the stream
    assert sizes == [1 + 4, 1, 1 + 8, 1 + 8, 1 + 8, 1 + 8]
    cache.read(62 * 512, 512)
    cache.read(63 * 512, 512)                # readahead stops at the end
    assert dev.reads[-1][0] + dev.reads[-1][1] <= 64 * 512


def test_cache_large_reads_bypass_and_keep_edges():
    data = pattern(100 * 512)
    dev = MemoryDevice(data)
    cache = SectorCache(dev, max_blocks=100, bypass_blocks=4)
    assert cache.read(512, 50 * 512) == data[512:51 * 512]
    assert dev.reads == [(512, 50 * 512)]
    assert len(cache) == 2  # first and last block only
    cache.read(512, 512)
    cache.read(50 * 512, 512)
    assert len(dev.reads) == 1


def test_byte_reader_reuses_its_window_without_device_call():
    dev = MemoryDevice(pattern(1 << 20))
    reader = ByteReader(dev)
    for k in range(0, 500, 20):
        reader.pread(k, 12)
    assert dev.reads == [(0, 512)]
    reader.pread(1000, 100)          # spans blocks 1 and 2
    reader.pread(1100, 20)           # inside the window just read
    assert dev.reads == [(0, 512), (512, 1024)]


def test_byte_reader_reads_ahead_only_for_streams():
    data = pattern(1 << 20)
    dev = MemoryDevice(data)
    reader = ByteReader(dev, max_window=65536)
    for offset in (5000, 300_000, 90_000):   # random multi-block reads: exact
        assert reader.pread(offset, 1000) == data[offset:offset + 1000]
    assert [length for _, length in dev.reads] == [1536, 1536, 1536]
    dev.reads.clear()
    offset = 7
    while offset < 400_000:                  # a stream of 4 KiB reads
        assert reader.pread(offset, 4096) == data[offset:offset + 4096]
        offset += 4096
    sizes = [length for _, length in dev.reads]
    assert sizes[:4] == [4608, 16384, 32768, 65536] and max(sizes) == 65536
    assert len(dev.reads) < 10


def test_byte_reader_past_capacity_is_short():
    data = pattern(1300)
    reader = ByteReader(SectorCache(MemoryDevice(data)))
    assert reader.pread(1290, 32) == data[1290:]
    assert reader.pread(1300, 1) == b""
    assert reader.pread(10**12, 5) == b""
    assert reader.read_exactly(1290, 32) is None
    assert reader.read_exactly(1200, 32) == data[1200:1232]
    with pytest.raises(ValueError):
        reader.pread(-1, 5)


# -- FileDevice ----------------------------------------------------------------

def test_file_device(tmp_path):
    data = pattern(10_000, seed=5)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    with FileDevice(path) as dev:
        assert isinstance(dev, BlockDevice)
        assert (dev.block_size, dev.capacity) == (512, 10_000)
        assert dev.read(0, 1024) == data[:1024]
        assert dev.read(9728, 1024) == data[9728:]
        assert dev.read(10_240, 512) == b""
        with pytest.raises(ValueError):
            dev.read(100, 512)
    with FileDevice(path, block_size=4096) as dev:
        assert dev.block_size == 4096
        assert dev.read(8192, 4096) == data[8192:]
        with pytest.raises(ValueError):
            dev.read(512, 512)


@settings(max_examples=50, deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, 21000), st.integers(0, 3000)), max_size=30))
def test_file_device_random_ranges(tmp_path_factory, ranges):
    path = tmp_path_factory.getbasetemp() / "random.img"
    data = pattern(20_000, seed=9)
    if not path.exists():
        path.write_bytes(data)
    dev = open_device(str(path))
    try:
        reader = ByteReader(dev)
        for offset, length in ranges:
            assert reader.pread(offset, length) == data[offset:offset + length]
    finally:
        dev.close()


def test_file_device_errors(tmp_path):
    with pytest.raises(DeviceError, match="cannot open .*missing.img"):
        FileDevice(tmp_path / "missing.img")
    with pytest.raises(DeviceError, match="is a directory"):
        FileDevice(tmp_path)
    assert issubclass(DeviceError, DocteurError)
    path = tmp_path / "x.img"
    path.write_bytes(b"")
    dev = FileDevice(path)
    assert dev.capacity == 0 and dev.read(0, 512) == b""
    dev.close()
    dev.close()  # idempotent


def test_file_device_that_shrinks_gives_short_reads(tmp_path):
    path = tmp_path / "shrink.img"
    path.write_bytes(pattern(4096))
    dev = open_device(str(path))
    os.truncate(path, 1000)
    assert ByteReader(dev).pread(0, 4096) == pattern(4096)[:1000]
    dev.close()


def test_file_device_on_a_character_device():
    dev = FileDevice("/dev/zero", block_size=512)
    try:
        assert dev.block_size == 512
    finally:
        dev.close()


@pytest.mark.nbdkit
def test_open_device_tells_paths_from_uris():
    assert is_nbd_uri("nbd://host/export")
    assert is_nbd_uri("NBD+UNIX:///?socket=/x")
    assert not is_nbd_uri("disk.img")
    assert not is_nbd_uri("/dev/vda")
