"""`docteur verify --commit ID`, and the commit an `ID.img` URL pins.

The pin is compared with the header before anything else is read: another
commit is one line, `wrong image: ...`, exit 1, nothing on stdout, and
`verify_image(commit=...)` raises WrongCommit having read a few bytes only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.blockdev.block import FileDevice
from docteur_core.errors import WrongCommit
from docteur_core.format.pin import pin_of_url
from docteur_core.make import make_image
from docteur_core.verify import verify_image

from tests.helpers.nginx import Nginx
from tests.helpers.support import REPO_ROOT

DATE = "2026-01-01T00:00:00Z"


def docteur(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pin")
    src = tmp / "src"
    (src / "docs").mkdir(parents=True)
    (src / "index.html").write_text("hello\n")
    (src / "docs" / "a.md").write_text("a\n" * 100)
    img = tmp / "site.img"
    other = tmp / "other.img"
    result = make_image(src, img, date=DATE, warn=lambda _: None)
    make_image(src, other, date="2026-01-02", warn=lambda _: None)
    return img, result.commit, other


def test_the_pinned_commit_verifies(built):
    img, commit, _ = built
    proc = docteur("verify", "--commit", commit.upper(), img)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"commit\t: {commit}\n")
    report = json.loads(docteur("verify", "--json", "--commit", commit, img).stdout)
    assert report["pin"] == commit and report["ok"]
    assert report["signature"]["state"] == "none"


def test_another_commit_is_one_line_before_anything_is_read(built):
    img, commit, other = built
    proc = docteur("verify", "--commit", commit, other)
    assert proc.returncode == 1 and proc.stdout == ""
    held = other.read_bytes()[:20].hex()
    assert proc.stderr == (f"docteur verify: wrong image: the image holds commit {held}, not "
                           f"the pinned {commit}\n")
    # the API: WrongCommit, and no more than the header and the PACK/IDX signatures were read

    class Counting(FileDevice):
        read_bytes = 0

        def read(self, offset, length):
            data = super().read(offset, length)
            Counting.read_bytes += len(data)
            return data

    device = Counting(str(other))
    try:
        with pytest.raises(WrongCommit, match=f"holds commit {held}"):
            verify_image(device, commit=commit)
    finally:
        device.close()
    assert Counting.read_bytes <= 2 * device.block_size


def test_a_bad_pin_is_a_usage_error(built):
    img, commit, _ = built
    for bad in (commit[:39], commit + "0", "g" * 40, ""):
        proc = docteur("verify", "--commit", bad, img)
        assert proc.returncode == 2
        assert "is not a commit id: 40 hexadecimal digits are needed" in proc.stderr


def test_not_an_image_stays_not_an_image_under_a_pin(built, tmp_path):
    _, commit, _ = built
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all, just words\n" * 10)
    proc = docteur("verify", "--commit", commit, text)
    assert proc.returncode == 1
    assert "not a docteur image" in proc.stderr


@pytest.mark.parametrize("url, pin", [
    ("https://example.org/img/" + "a" * 40 + ".img", "a" * 40),
    ("http://example.org/" + "AbCdEf0123" * 4 + ".img?sig=x#frag", "abcdef0123" * 4),
    ("https://example.org/img/%61" + "a" * 39 + ".img", "a" * 40),
    ("https://example.org/img/" + "a" * 40 + ".img/", None),
    ("https://example.org/img/" + "a" * 39 + ".img", None),
    ("https://example.org/img/" + "a" * 40 + ".iso", None),
    ("https://example.org/img/x" + "a" * 40 + ".img", None),
    ("nbd://127.0.0.1:10809/" + "a" * 40 + ".img", None),
    ("/srv/img/" + "a" * 40 + ".img", None),
    ("file:///srv/" + "a" * 40 + ".img", None),
    ("https://" + "a" * 40 + ".img", None),
])
def test_pin_of_url(url, pin):
    assert pin_of_url(url) == pin


@pytest.mark.nginx
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is installed by .ci/setup")
def test_an_id_dot_img_url_pins_its_commit_unless_told_otherwise(built, tmp_path):
    img, commit, other = built
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(img, root / f"{commit}.img")
    wrong = "0123456789" * 4
    shutil.copy(other, root / f"{wrong}.img")
    with Nginx(root) as server:
        good = docteur("verify", f"{server.url}/{commit}.img")
        assert good.returncode == 0, good.stderr
        bad = docteur("verify", f"{server.url}/{wrong}.img")
        assert bad.returncode == 1 and bad.stdout == ""
        held = other.read_bytes()[:20].hex()
        assert bad.stderr == (f"docteur verify: wrong image: the image holds commit {held}, not "
                              f"the pinned {wrong} (by the URL's name, {wrong}.img; --commit ID "
                              "pins another)\n")
        told = docteur("verify", "--commit", held, f"{server.url}/{wrong}.img")
        assert told.returncode == 0, told.stderr
