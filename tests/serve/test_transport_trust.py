"""Transport rules and serve's pin (issue 21, points 4 and 1 for serve).

- An https URL redirected to plain http is refused, at any hop of any
  request, by the reader (`docteur cat https://...`) and by `docteur serve`
  (its check, and nbdkit's curl with `protocols=https`).
- An origin that sends neither ETag nor Last-Modified is read only under a
  pin (`open_device(url, pinned=True)`); unpinned it is one line naming
  --commit. Origins with a validator read as before.
- `docteur serve IMAGE|URL --commit ID` refuses to start on another commit
  (one line, exit 1, no nbdkit left); a URL ending in ID.img pins ID; serve
  prints the commit and the client command that pins it.

The origins are the liars (tests/helpers/liars.py) and a real nginx (tests/helpers/nginx.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from docteur_core.blockdev.device import open_device
from docteur_core.blockdev.http_range import (InsecureRedirect, NoValidator, Redirect,
                                              RemoteError, Validator, check_redirect, judge,
                                              require_validator)
from docteur_core.reader.image import Image
from docteur_core.serve.nbdkit import PLUGIN, Listen, Server, ServeError, command
from tests.helpers.liars import LyingHttp, Policy
from tests.helpers.nginx import Nginx
from tests.helpers.plugin_support import make_source
from tests.helpers.support import wait_gone
from tests.helpers.serving import cmdline, nbdkits_of

pytestmark = [pytest.mark.nbdkit]

DOCTEUR = [sys.executable, "-m", "docteur_core"]
OTHER = "0123456789abcdef" * 2 + "01234567"  # a commit no image here holds


def docteur(*args, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """{path, data, commit, readme} of one image."""
    tmp = tmp_path_factory.mktemp("trust")
    src = make_source(tmp / "src", seed=21, big=30_000)
    path = tmp / "a.img"
    made = docteur("make", "--date", "2026-01-01", src, path)
    assert made.returncode == 0, made.stderr
    commit = json.loads(docteur("info", "--json", path).stdout)["commit"]
    return {"path": path, "data": path.read_bytes(), "commit": commit,
            "readme": (src / "README.txt").read_text()}


# -- the rules, pure -------------------------------------------------------------------


@pytest.mark.parametrize("url,location", [
    ("https://a.example/x.img", "http://a.example/x.img"),
    ("HTTPS://a.example/x.img", "HTTP://b.example/y.img?sig=s3cr3t"),
])
def test_a_redirect_from_https_to_http_is_refused(url, location):
    with pytest.raises(InsecureRedirect) as err:
        check_redirect(url, location)
    text = str(err.value)
    assert "from https to plain http" in text and "\n" not in text and "s3cr3t" not in text
    with pytest.raises(InsecureRedirect):
        judge(url, 302, "", {"location": location}, 0, 512, None, None)


@pytest.mark.parametrize("url,location", [
    ("https://a.example/x.img", "https://b.example/x.img"),
    ("https://a.example/x.img", "/elsewhere/x.img"),      # relative: stays https
    ("https://a.example/x.img", "//b.example/x.img"),     # scheme-relative: too
    ("http://a.example/x.img", "https://a.example/x.img"),
    ("http://a.example/x.img", "http://b.example/x.img"),
])
def test_other_redirects_are_followed(url, location):
    got = judge(url, 307, "", {"location": location}, 0, 512, None, None)
    assert isinstance(got, Redirect)
    assert got.url.startswith("https:") or url.startswith("http:")


def test_an_origin_without_validator_needs_a_pin():
    with pytest.raises(NoValidator) as err:
        require_validator("http://a.example/x.img?sig=s3cr3t", Validator(), pinned=False)
    assert "--commit ID" in str(err.value) and "s3cr3t" not in str(err.value)
    require_validator("http://a.example/x.img", Validator(), pinned=True)
    require_validator("http://a.example/x.img", Validator('"e"'), pinned=False)
    require_validator("http://a.example/x.img", Validator(last_modified="d"), pinned=False)
    assert issubclass(NoValidator, RemoteError) and issubclass(InsecureRedirect, RemoteError)


# -- https -> http with the real reader --------------------------------------------------


@pytest.mark.parametrize("redirects,after", [
    (("http",), 0),            # the first hop
    (("https", "http"), 0),    # a later hop of the first request
    (("http",), 1),            # a later request: the first was answered directly
])
def test_the_reader_refuses_https_redirected_to_http(image, redirects, after):
    liar = LyingHttp(Policy.always(image["data"]), tls=True, redirects=redirects,
                     redirect_after=after)
    with liar as url:
        line = one_line(docteur("cat", url, "README.txt",
                                env={**liar.env, "DOCTEUR_HTTP_CHUNK": "512"}))
    assert line.startswith("docteur cat: https://127.0.0.1:"), line
    assert "from https to plain http" in line, line
    assert [r for r in liar.requests if r[0] == "http"] == []  # never followed


def test_https_to_https_and_http_to_https_redirects_still_read(image):
    for tls, redirects in ((True, ("https",)), (False, ("https",))):
        liar = LyingHttp(Policy.always(image["data"]), tls=tls, redirects=redirects)
        with liar as url:
            got = docteur("cat", url, "README.txt", env=liar.env)
        assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr


# -- an origin without ETag or Last-Modified -------------------------------------------


def test_an_origin_without_validator_is_refused_unpinned(image):
    with LyingHttp(Policy.always(image["data"]), validators="none") as url:
        line = one_line(docteur("cat", url, "README.txt"))
        with pytest.raises(NoValidator):
            open_device(url)
    assert line.startswith(f"docteur cat: {url}: the origin sends neither ETag nor "
                           "Last-Modified"), line
    assert "--commit ID" in line, line


def test_an_origin_without_validator_is_read_when_pinned(image):
    with LyingHttp(Policy.always(image["data"]), validators="none") as url:
        device = open_device(url, pinned=True)
        try:
            with Image.open(device, "light", verify=True) as img:
                assert img.commit.id == image["commit"]
                assert img.get("README.txt").decode() == image["readme"]
        finally:
            device.close()


@pytest.mark.parametrize("validators", ["kept", "etag", "last-modified", "honest"])
def test_origins_with_a_validator_read_as_before(image, validators):
    with LyingHttp(Policy.always(image["data"]), validators=validators) as url:
        got = docteur("cat", url, "README.txt")
    assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr


# -- serve's pin: an image file ------------------------------------------------------------


def _pin_line(commit: str, how: str, uri: str) -> str:
    return (f"docteur serve: commit {commit} ({how}); clients pin it with: "
            f"docteur cat --commit {commit} {shlex.quote(uri)} PATH")


def test_serve_refuses_an_image_of_another_commit(image, tmp_path):
    disk = tmp_path / "disk.img"
    shutil.copyfile(image["path"], disk)
    for foreground in ([], ["--foreground"]):
        proc = docteur("serve", *foreground, "--unix", tmp_path / "s.sock", "--commit", OTHER,
                       disk)
        line = one_line(proc)
        assert line == (f"docteur serve: wrong image: {disk} holds commit {image['commit']}, "
                        f"not {OTHER} (pinned by --commit)"), line
        assert nbdkits_of(disk) == []
        assert not (tmp_path / "s.sock").exists()


def test_serve_with_the_right_commit_prints_it_and_the_client_command(image, tmp_path,
                                                                      daemons):
    disk = tmp_path / "disk.img"
    shutil.copyfile(image["path"], disk)
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    upper = image["commit"].upper()  # --commit takes either case, shows lower case
    proc = docteur("serve", "--unix", tmp_path / "s.sock", "--pidfile", pidfile,
                   "--commit", upper, disk)
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.strip()
    assert uri == f"nbd+unix:///?socket={tmp_path / 's.sock'}"
    lines = proc.stderr.splitlines()
    assert lines[-1] == _pin_line(image["commit"], "pinned by --commit", uri), lines
    pid = int(pidfile.read_text())
    # docteur serve holds the pin itself (one nbdkit per client, each given
    # an image it checked): a rebuild of another commit is refused
    # (tests/serve/test_serve.py)
    assert cmdline(pid)[1:4] == ["-m", "docteur_core", "serve"] and "--commit" in cmdline(pid)
    client = shlex.split(lines[-1].split("clients pin it with: ", 1)[1])
    client = [*DOCTEUR, *client[1:-1], "README.txt"]
    assert "--commit" in client
    got = subprocess.run(client, capture_output=True, text=True, timeout=120)
    assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)


def test_serve_without_commit_prints_the_headers(image, tmp_path):
    disk = tmp_path / "disk.img"
    shutil.copyfile(image["path"], disk)
    proc = subprocess.Popen([*DOCTEUR, "serve", "--foreground", "--unix", tmp_path / "s.sock",
                             disk], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        uri = proc.stdout.readline().strip()
        assert uri == f"nbd+unix:///?socket={tmp_path / 's.sock'}", proc.stderr.read()
        serving = proc.stderr.readline()
        assert serving.startswith("docteur serve: serving "), serving
        assert proc.stderr.readline().rstrip("\n") == \
            _pin_line(image["commit"], "the image's header", uri)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_serve_refuses_commit_for_a_folder(image, tmp_path):
    shutil.copyfile(image["path"], tmp_path / "a.img")
    line = one_line(docteur("serve", "--commit", image["commit"], tmp_path))
    assert "--commit pins one image" in line, line
    assert nbdkits_of(tmp_path) == []


def test_the_plugin_refuses_another_commit_itself(image, tmp_path):
    """commit= is checked by the plugin too (a file replaced under a pinned
    server, or nbdkit run by hand): nbdkit does not start, one line."""
    disk = tmp_path / "disk.img"
    shutil.copyfile(image["path"], disk)
    server = Server(lambda listen, pidfile: command(disk, listen, commit=OTHER,
                                                    exit_with_parent=True, pidfile=pidfile),
                    Listen(unix=tmp_path / "s.sock"))
    with pytest.raises(ServeError) as err:
        server.start()
    text = str(err.value)
    assert "\n" not in text and f"holds commit {image['commit']}, not {OTHER}" in text, text
    assert "commit=" in text and nbdkits_of(disk) == []
    with Server(lambda listen, pidfile: command(disk, listen, commit=image["commit"],
                                                exit_with_parent=True, pidfile=pidfile),
                Listen(unix=tmp_path / "t.sock")) as good:
        got = docteur("cat", good.uri, "README.txt")
        assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr
    bad = subprocess.run(["nbdkit", "--readonly", "-U", tmp_path / "u.sock", "python", PLUGIN,
                          f"image={disk}", "commit=xyz"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "commit='xyz': 40 hexadecimal digits" in bad.stderr


# -- serve's pin: a URL ------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(image, tmp_path_factory):
    """nginx serving the image as image.img, as <its commit>.img and as
    <another commit>.img."""
    root = tmp_path_factory.mktemp("www")
    for name in ("image.img", f"{image['commit']}.img", f"{OTHER}.img"):
        shutil.copyfile(image["path"], root / name)
    with Nginx(root) as server:
        yield server


@pytest.mark.nginx
@pytest.mark.parametrize("name,commit,how", [
    ("image.img", OTHER, "--commit"),
    (f"{OTHER}.img", None, "the URL's name"),
    ("image.img", "xyz", None),
])
def test_serve_url_refuses_another_commit(image, origin, tmp_path, name, commit, how):
    url = f"{origin.url}/{name}"
    if how is None:  # a malformed id: argparse's usage error
        proc = docteur("serve", "--commit", commit, url)
        assert proc.returncode == 2 and "40 hexadecimal digits" in proc.stderr
        return
    args = ["--commit", commit] if commit else []
    for foreground in ([], ["--foreground"]):
        line = one_line(docteur("serve", *foreground, "--unix", tmp_path / "s.sock", *args, url))
        assert line == (f"docteur serve: wrong image: {url} holds commit {image['commit']}, "
                        f"not {OTHER} (pinned by {how})"), line
        assert nbdkits_of(url) == [] and not (tmp_path / "s.sock").exists()


@pytest.mark.nginx
@pytest.mark.parametrize("name,given,how", [
    ("image.img", "right", "pinned by --commit"),
    ("{commit}.img", None, "pinned by the URL's name"),
    (f"{OTHER}.img", "right", "pinned by --commit"),   # --commit says otherwise
    ("image.img", None, "the image's header"),
])
def test_serve_url_with_the_right_pin_prints_it(image, origin, tmp_path, name, given, how,
                                                daemons):
    url = f"{origin.url}/{name.format(commit=image['commit'])}"
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    args = ["--commit", image["commit"]] if given else []
    proc = docteur("serve", "--unix", tmp_path / "s.sock", "--pidfile", pidfile, *args, url)
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.strip()
    assert proc.stderr.splitlines()[-1] == _pin_line(image["commit"], how, uri)
    got = docteur("cat", uri, "README.txt")
    assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)


def test_serve_url_without_validator_needs_a_pin(image, tmp_path, daemons):
    liar = LyingHttp(Policy.always(image["data"]), validators="none")
    with liar as url:
        line = one_line(docteur("serve", "--unix", tmp_path / "s.sock", url))
        assert "neither ETag nor Last-Modified" in line and "--commit ID" in line, line
        pidfile = tmp_path / "nbdkit.pid"
        daemons.append(pidfile)
        proc = docteur("serve", "--unix", tmp_path / "s.sock", "--pidfile", pidfile,
                       "--commit", image["commit"], url)
        assert proc.returncode == 0, proc.stderr
        assert "nbdkit cannot detect a replaced object, clients that pin the commit can" \
            in proc.stderr
        got = docteur("cat", proc.stdout.strip(), "README.txt")  # nbdkit's curl, HEAD and all
        assert (got.returncode, got.stdout) == (0, image["readme"]), got.stderr
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)


def test_serve_url_refuses_https_redirected_to_http(image, tmp_path):
    liar = LyingHttp(Policy.always(image["data"]), tls=True, redirects=("http",))
    with liar as url:
        line = one_line(docteur("serve", "--unix", tmp_path / "s.sock", url, env=liar.env))
    assert "from https to plain http" in line, line
    assert nbdkits_of(url) == [] and [r for r in liar.requests if r[0] == "http"] == []
