"""Images of remote repositories served for real on 127.0.0.1.

- git:// by `git daemon`;
- http:// by `git http-backend` (smart HTTP) behind a small threaded HTTP
  server, with and without basic authentication (credentials in the URL).
The image of a remote must be byte-identical to the image of the same
commit built from the local repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.make import make_image
from docteur_core.errors import BuildError
from tests.helpers.support import free_port
from tests.helpers.gitoracle import check_image, image_listing



def check_remote(url: str, tmp: Path, served: dict, local_images: dict, ref, commit: str):
    result = make_image(url, tmp / "remote.img", branch=ref)
    assert result.commit == commit and result.kind == "remote"
    checked = check_image(tmp / "remote.img", tmp)
    assert image_listing(checked.git_dir, commit) == image_listing(served["repo"], commit)
    assert (tmp / "remote.img").read_bytes() == local_images[ref]


@pytest.mark.parametrize("ref, index", [(None, 2), ("old", 1), ("v1", 0)])
def test_git_daemon(git_daemon, served, local_images, tmp_path, ref, index):
    check_remote(f"{git_daemon}/project.git", tmp_path, served, local_images, ref,
                 served["commits"][index])


@pytest.mark.parametrize("ref, index", [(None, 2), ("refs/heads/old", 1), ("v1", 0)])
def test_smart_http(http_open, served, local_images, tmp_path, ref, index):
    key = "old" if ref == "refs/heads/old" else ref
    result = make_image(f"{http_open}/project.git", tmp_path / "h.img", branch=ref)
    assert result.commit == served["commits"][index]
    check_image(tmp_path / "h.img", tmp_path)
    assert (tmp_path / "h.img").read_bytes() == local_images[key]


def test_http_credentials_in_url(http_auth, served, local_images, tmp_path):
    check_remote(f"http://alice:s3cret@{http_auth}/project.git", tmp_path, served,
                 local_images, None, served["commits"][2])


@pytest.mark.parametrize("userinfo", ["alice:wrong@", ""])
def test_http_authentication_refused(http_auth, tmp_path, userinfo):
    url = f"http://{userinfo}{http_auth}/project.git"
    with pytest.raises(BuildError) as err:
        make_image(url, tmp_path / "x.img")
    assert str(err.value).endswith(": authentication refused")
    assert "wrong" not in str(err.value)  # the password is not printed
    assert not (tmp_path / "x.img").exists()


def test_remote_unknown_branch(git_daemon, tmp_path):
    with pytest.raises(BuildError, match=r"project.git: unknown branch or tag 'nope'$"):
        make_image(f"{git_daemon}/project.git", tmp_path / "x.img", branch="nope")


def test_remote_not_a_repository(git_daemon, http_open, tmp_path):
    for url in (f"{git_daemon}/missing.git", f"{http_open}/missing.git"):
        with pytest.raises(BuildError, match=r"missing.git: not a Git repository"):
            make_image(url, tmp_path / "x.img")


def test_remote_unreachable(tmp_path):
    port = free_port()  # nothing listens there
    for url in (f"git://127.0.0.1:{port}/project.git", f"http://127.0.0.1:{port}/project.git"):
        with pytest.raises(BuildError, match=r": unreachable \("):
            make_image(url, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()


def test_cli_remote_error_is_one_line(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make",
                           f"git://127.0.0.1:{port}/p.git", str(tmp_path / "x.img")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"docteur make: git://127.0.0.1:{port}/p.git: unreachable (")
    assert proc.stderr.count("\n") == 1
