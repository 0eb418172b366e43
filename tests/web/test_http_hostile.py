"""Hostile images behind `docteur http`: forged entries and objects serve
nothing wrong — a 404 or a 500 whose body holds none of the forged bytes,
and the honest files of the same image still served."""

from __future__ import annotations

import http.client
import os
import subprocess

import pytest

from docteur_core.format.pack import object_id
from tests.helpers import forge
from tests.helpers.forge import Obj
from tests.helpers.http_server import DOCTEUR, HttpServer

SECRET = b"SECRET-BYTES-" * 40


def _get(server, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _curl(server, path: str) -> tuple[int, bytes]:
    done = subprocess.run(["curl", "-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}",
                           server.url.rstrip("/") + path], capture_output=True, timeout=300)
    body, _, code = done.stdout.rpartition(b"\n")
    return int(code), body


def _image_with_root(path, entries, extra=()):
    """An image whose root tree lists `entries` (mode, name, Obj), as given."""
    objs, rows = [], []
    for mode, name, value in entries:
        objs.append(value)
        rows.append((mode, name, value.oid))
    t = Obj("tree", forge.tree(*rows))
    c = Obj("commit", forge.commit(t.oid))
    path.write_bytes(bytes(forge.build([c, t, *objs, *extra], c.oid)))


@pytest.mark.parametrize("name", ["..", ".git", ".GIT", "git~1", "a/b"])
def test_a_tree_naming_an_escape_serves_nothing(tmp_path, name):
    """A root tree that names `..`, `.git` (or a spelling of it) or a name
    with a slash: the tree is damage, every path through it a 500, and
    the entry's bytes never go out."""
    image = tmp_path / "hostile.img"
    secret = Obj("blob", SECRET)
    entries = [("100644", "index.html", Obj("blob", b"<p>hi</p>\n")), ("100644", name, secret)]
    if name == ".git":
        inner = Obj("tree", forge.tree(("100644", "config", secret.oid)))
        entries[1] = ("40000", name, inner)
        _image_with_root(image, entries, [secret])
    else:
        _image_with_root(image, entries)
    with HttpServer(image, "-q") as s:
        for path in ("/", "/index.html", "/" + name, "/.git/config", "/%2e%2e",
                     "/" + name + "/config"):
            status, body = _curl(s, path)
            assert status in (404, 500), path
            assert b"SECRET" not in body, path


def test_a_forged_blob_is_500_and_the_rest_is_served(tmp_path):
    """A blob whose bytes are not those its id names (the IDX's CRC-32
    made right, so only the SHA-1 can tell): 500, none of its bytes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.html").write_bytes(b"<p>honest</p>\n")
    (src / "secret.txt").write_bytes(b"the honest text of the file.\n" * 10)
    image = tmp_path / "site.img"
    subprocess.run(DOCTEUR + ["make", "-q", str(src), str(image)], check=True)
    data = image.read_bytes()
    honest = (src / "secret.txt").read_bytes()
    oid = object_id("blob", honest)
    forged = honest.replace(b"honest", b"FORGED")
    image.write_bytes(bytes(forge.rewrite_object(data, oid, forged)))
    with HttpServer(image, "-q") as s:
        status, body = _get(s, "/secret.txt")
        assert status == 500 and b"FORGED" not in body and b"honest text" not in body
        assert _get(s, "/index.html") == (200, b"<p>honest</p>\n")
        # Asked again (a damaged answer is not kept): still 500.
        assert _get(s, "/secret.txt")[0] == 500
        # Ranges of it too: nothing.
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=300)
        conn.request("GET", "/secret.txt", headers={"Range": "bytes=0-5"})
        r = conn.getresponse()
        assert r.status == 500 and b"FORGED" not in r.read()
        conn.close()
    # --no-verify trusts the CRC-32 the forger fixed: documented, and shown here.
    with HttpServer(image, "-q", "--no-verify") as s:
        assert _get(s, "/secret.txt") == (200, forged)


def test_a_forged_large_blob_sends_no_byte(tmp_path):
    """A file over the spool threshold whose bytes do not hash to its id:
    it is checked whole before its first byte would go out, so the answer
    is a 500 with none of it (not a 200 cut short)."""
    honest = os.urandom((17 << 20) + 5)
    forged = b"FORGED" + os.urandom(len(honest) - 6)
    blob = Obj("blob", forged, oid=object_id("blob", honest))
    image = tmp_path / "large.img"
    _image_with_root(image, [("100644", "big.bin", blob),
                             ("100644", "small.txt", Obj("blob", b"small\n"))])
    with HttpServer(image, "-q") as s:
        status, body = _curl(s, "/big.bin")
        assert status == 500 and len(body) < 100 and b"FORGED" not in body
        assert _get(s, "/small.txt") == (200, b"small\n")


def test_a_repointed_tree_serves_nothing_wrong(tmp_path):
    """A tree listed under its honest id whose entry names another blob:
    the tree does not hash to its id, so no file through it is served."""
    image = tmp_path / "repointed.img"
    _, files = forge.repointed_tree_image(image)
    with HttpServer(image, "-q") as s:
        for name in files:
            status, body = _get(s, "/" + name)
            assert status == 500, name
            assert b"another file" not in body and b"the file the commit" not in body
        assert _get(s, "/")[0] == 500


def test_a_link_entry_is_never_followed(tmp_path):
    """Links forged in the tree (a builder would store them too): absolute,
    climbing, to .git: 404, never their target's bytes."""
    image = tmp_path / "links.img"
    secret = Obj("blob", SECRET)
    inner = Obj("tree", forge.tree(("100644", "secret", secret.oid)))
    entries = [("120000", "abs", Obj("blob", b"/etc/passwd")),
               ("120000", "climb", Obj("blob", b"../../../etc/passwd")),
               ("120000", "in", Obj("blob", b"dir/secret")),
               ("40000", "dir", inner)]
    _image_with_root(image, entries, [secret])
    with HttpServer(image, "-q") as s:
        for name in ("abs", "climb"):
            status, body = _get(s, "/" + name)
            assert status == 404 and b"root:" not in body, name
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=300)
        conn.request("GET", "/in")
        r = conn.getresponse()
        assert r.status == 302 and r.getheader("Location") == "/dir/secret"
        assert b"SECRET" not in r.read()
        conn.close()
