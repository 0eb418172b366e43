"""The lying servers' own sanity (tests/helpers/liars.py): an honest policy gives
the right bytes to docteur's clients and to independent ones (curl,
libnbd's nbdinfo and nbdcopy), a switch happens exactly where the policy
says, and the HTTP liar's validators, TLS and redirects are what its
options say. Nothing here depends on timing: the liars listen before their
context manager returns.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from docteur_core.blockdev.http import HttpDevice
from docteur_core.blockdev.http_range import OriginChanged
from docteur_core.blockdev.nbd_client import NbdDevice
from tests.helpers.liars import KEPT_DATE, KEPT_ETAG, LyingHttp, LyingNbd, Policy
from tests.helpers.plugin_support import make_source

DOCTEUR = [sys.executable, "-m", "docteur_core"]
A = random.Random(1).randbytes(64 << 10)
B = random.Random(2).randbytes(64 << 10)


def docteur(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})})


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(image bytes, its README.txt)."""
    tmp = tmp_path_factory.mktemp("liars")
    src = make_source(tmp / "src", seed=5, big=20_000)
    made = docteur("make", "--date", "2026-01-01", src, tmp / "a.img")
    assert made.returncode == 0, made.stderr
    return (tmp / "a.img").read_bytes(), (src / "README.txt").read_bytes()


# -- the policy ----------------------------------------------------------------------


def test_a_policy_counts_reads_and_switches_after_n():
    policy = Policy.switch(A, B, after=2)
    assert policy.current() is policy.images[0] and policy.reads == 0  # not a read
    assert [policy.take() == A for _ in range(4)] == [True, True, False, False]
    assert policy.reads == 4 and policy.current() == B
    fresh = Policy.switch(A, B, after=1, per_connection=True).for_connection()
    assert fresh.take() == A and fresh.take() == B
    assert Policy.always(A).take() == A


# -- NBD -----------------------------------------------------------------------------


@pytest.mark.nbdkit
def test_an_honest_nbd_liar_serves_the_image_to_every_client(image):
    data, readme = image
    liar = LyingNbd(Policy.always(data), description="a liar")
    with liar as uri:
        assert uri.startswith("nbd://127.0.0.1:")
        with NbdDevice(uri, block_size=512) as device:
            assert device.capacity == len(data)
            assert device.read(0, len(data)) == data
        got = docteur("cat", uri, "README.txt")
        assert (got.returncode, got.stdout) == (0, readme), got.stderr
        if shutil.which("nbdcopy"):  # libnbd, independent of docteur and nbdkit
            copied = subprocess.run(["nbdcopy", uri, "-"], capture_output=True, timeout=60)
            assert copied.stdout == data, copied.stderr
            info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True,
                                  text=True, timeout=60)
            assert info.stdout.strip() == str(len(data)), info.stderr
    assert liar.connections >= 2


def test_the_nbd_liar_switches_mid_session():
    policy = Policy.switch(A, B, after=3)
    with LyingNbd(policy) as uri, NbdDevice(uri) as device:
        assert [device.read(0, 4096) for _ in range(3)] == [A[:4096]] * 3
        assert device.read(4096, 8192) == B[4096:12288]  # the same connection
    assert policy.reads == 4


def test_the_nbd_liar_per_connection_and_on_a_unix_socket(tmp_path):
    sock = tmp_path / "liar.sock"
    with LyingNbd(Policy.switch(A, B, after=1, per_connection=True), unix=sock) as uri:
        assert uri == f"nbd+unix:///?socket={sock}"
        for _ in range(2):  # each connection starts again with A
            with NbdDevice(uri) as device:
                assert device.read(0, 4096) == A[:4096] and device.read(0, 4096) == B[:4096]
    assert not sock.exists()


# -- HTTP ----------------------------------------------------------------------------


def _headers(raw: bytes) -> dict[str, str]:
    lines = raw.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def test_an_honest_http_liar_serves_ranges_to_curl_and_docteur(image):
    data, readme = image
    liar = LyingHttp(Policy.always(data))
    with liar as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/image.img")
        assert curl("-r", "100-1123", url).stdout == data[100:1124]
        assert curl(url).stdout == data  # no Range: the whole object
        head = _headers(curl("-I", url).stdout)
        assert head["content-length"] == str(len(data)) and head["accept-ranges"] == "bytes"
        assert (head["etag"], head["last-modified"]) == (KEPT_ETAG, KEPT_DATE)
        assert curl("-o", "/dev/null", "-w", "%{http_code}", "-r", f"{len(data)}-",
                    url).stdout == b"416"
        got = docteur("cat", url, "README.txt")
        assert (got.returncode, got.stdout) == (0, readme), got.stderr
    assert ("http", "HEAD", "/image.img", "-", 200) in liar.requests


def test_the_https_liar_is_trusted_through_its_throwaway_ca(image):
    data, readme = image
    liar = LyingHttp(Policy.always(data), tls=True)
    with liar as url:
        assert url.startswith("https://127.0.0.1:")
        assert liar.env == {"SSL_CERT_FILE": str(liar.ca_file)}
        assert curl("--cacert", str(liar.ca_file), "-r", "0-99", url).stdout == data[:100]
        got = docteur("cat", url, "README.txt", env=liar.env)
        assert (got.returncode, got.stdout) == (0, readme), got.stderr
        untrusted = docteur("cat", url, "README.txt", env={"SSL_CERT_FILE": os.devnull})
        assert untrusted.returncode == 1 and b"TLS failed" in untrusted.stderr


@pytest.mark.parametrize("mode,etag,date", [
    ("none", None, None), ("etag", KEPT_ETAG, None), ("last-modified", None, KEPT_DATE),
])
def test_the_http_liar_sends_the_validators_asked(mode, etag, date):
    with LyingHttp(Policy.always(A), validators=mode) as url:
        head = _headers(curl("-I", url).stdout)
    assert (head.get("etag"), head.get("last-modified")) == (etag, date)


def test_a_kept_etag_hides_a_switch_and_an_honest_one_shows_it():
    with LyingHttp(Policy.switch(A, B, after=1)) as url:  # the lie works
        device = HttpDevice(url, chunk=512)
        try:
            assert device.read(0, 512) == A[:512]  # kept from the first request
            assert device.read(4096, 512) == B[4096:4608]
        finally:
            device.close()
    with LyingHttp(Policy.switch(A, B, after=1), validators="honest") as url:
        device = HttpDevice(url, chunk=512)
        try:
            with pytest.raises(OriginChanged):  # If-Match fails: HTTP 412
                device.read(4096, 512)
        finally:
            device.close()


def test_redirect_chains_go_through_the_schemes_asked(image):
    data, readme = image
    liar = LyingHttp(Policy.always(data), tls=False, redirects=("https", "http"))
    with liar as url:
        got = curl("-L", "--cacert", str(liar.ca_file), "-r", "0-9", url)
        assert got.stdout == data[:10], got.stderr
    hops = [(scheme, path.split("/")[1:3], status) for scheme, _m, path, _r, status
            in liar.requests]
    assert hops == [("http", ["image.img"], 302), ("https", ["_liar", "http"], 302),
                    ("http", ["_liar", "-"], 206)]


def test_redirects_may_begin_after_some_requests():
    liar = LyingHttp(Policy.always(A), redirects=("http",), redirect_after=1)
    with liar as url:
        assert curl("-r", "0-9", url).stdout == A[:10]
        assert curl("-o", "/dev/null", "-w", "%{http_code}", "-r", "0-9", url).stdout == b"302"
