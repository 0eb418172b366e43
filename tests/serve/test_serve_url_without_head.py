"""`docteur serve URL` where the origin refuses HEAD, as an S3 URL presigned
for GET only does (403): nbdkit's curl plugin (1.32) asks HEAD for the size
and has no option to be told it, so such a URL is served by the docteur
plugin reading with range GETs (url=), behind the cache filter. A real nginx
refuses HEAD under /gethonly/ (tests/helpers/nginx.py); real nbdkit, real clients."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.helpers.cli import DOCTEUR, docteur
from tests.helpers.nginx import Nginx
from tests.helpers.plugin_support import make_source
from tests.reader.test_http_images import Served

pytestmark = [pytest.mark.nginx, pytest.mark.nbdkit]

SECRET = "X-Amz-Signature=0123456789abcdef"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gethonly")
    root = tmp / "www"
    root.mkdir()
    src = make_source(tmp / "src", seed=5)
    made = subprocess.run([*DOCTEUR, "make", src, root / "image.img"], capture_output=True)
    assert made.returncode == 0, made.stderr
    with Nginx(root) as server:
        yield server, root / "image.img", src


def test_the_origin_refuses_head_and_answers_ranges(origin):
    server, image, _src = origin
    url = f"{server.url}/gethonly/image.img?{SECRET}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30)
    assert refused.value.code == 403
    ranged = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    with urllib.request.urlopen(ranged, timeout=30) as answer:
        assert answer.status == 206 and answer.read() == image.read_bytes()[:1]


def test_serve_url_without_head_serves_the_image(origin, tmp_path):
    server, image, src = origin
    commit = json.loads(docteur("info", "--json", image).stdout)["commit"]
    before = len(server.log_lines())
    served = Served(f"{server.url}/gethonly/image.img?{SECRET}", tmp_path / "s.sock")
    try:
        copy = tmp_path / "copy.img"
        done = subprocess.run(["nbdcopy", served.uri, copy], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert copy.read_bytes() == image.read_bytes()
        got = docteur("cat", "--commit", commit, served.uri, "/README.txt")
        assert got.returncode == 0, got.stderr
        assert got.stdout == (src / "README.txt").read_bytes()
        info = json.loads(subprocess.run(["nbdinfo", "--json", served.uri], capture_output=True,
                                         check=True, timeout=60).stdout)
        assert f"docteur image: commit {commit}" in info["exports"][0]["description"]
        # the plugin's range GETs, behind the cache filter: nbdkit's python plugin
        nbdkits = subprocess.run(["pgrep", "-P", str(served.proc.pid), "-x", "nbdkit"],
                                 capture_output=True, text=True).stdout.split()
        assert len(nbdkits) == 1
        with open(f"/proc/{nbdkits[0]}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"python" in argv and b"--filter=cache" in argv
    finally:
        err = served.stop()
    assert "the origin answers HEAD with HTTP 403: served by docteur's plugin with range GETs" \
        in err, err
    assert SECRET not in err and "Traceback" not in err
    records = server.log_lines()[before:]
    heads = [r for r in records if r[2].startswith("HEAD ")]
    assert [status for status, *_ in heads] == [403]  # the probe alone
    assert all(r[2].startswith(("GET ", "HEAD ")) for r in records)


def test_an_origin_answering_head_keeps_nbdkits_curl_plugin(origin, tmp_path):
    server, image, _src = origin
    served = Served(f"{server.url}/image.img", tmp_path / "s.sock")
    try:
        got = subprocess.run(["nbdcopy", served.uri, "-"], capture_output=True, timeout=120)
        assert got.returncode == 0 and got.stdout == image.read_bytes()
        nbdkits = subprocess.run(["pgrep", "-P", str(served.proc.pid), "-x", "nbdkit"],
                                 capture_output=True, text=True).stdout.split()
        with open(f"/proc/{nbdkits[0]}/cmdline", "rb") as f:
            assert b"curl" in f.read().split(b"\0")
    finally:
        err = served.stop()
    assert "range GETs" not in err
