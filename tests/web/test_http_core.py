"""The web server's sans-IO core: request heads, paths, ranges, dates and
the responses of an entity, with Hypothesis for the round trips; and the
reader's `Image.content` the server relies on (checked bytes, or a
checked temporary file for a large file)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.errors import DamagedImage
from docteur_core.format.pack import object_id
from docteur_core.reader.image import Image
from docteur_core.web.ranges import parse_ranges
from docteur_core.web.request import BadRequest, RequestParser, parse_head
from docteur_core.web.site import (Entity, NotHere, Site, http_date, parse_http_date,
                                   quote_path, split_target, target_key)
from tests.helpers import forge
from tests.helpers.forge import Obj


# --- request heads -------------------------------------------------------------

def _request(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abc/%-._~", min_size=1, max_size=20), min_size=1,
                max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_requests_split_anywhere_parse_the_same(paths, cuts):
    stream = b"".join(_request("/" + p) for p in paths)
    parser = RequestParser()
    got = []
    at = 0
    for cut in cuts + [len(stream)]:
        parser.feed(stream[at:at + cut])
        at += cut
        while (r := parser.next()) is not None:
            got.append(r.target)
    parser.feed(stream[at:])
    while (r := parser.next()) is not None:
        got.append(r.target)
    assert got == ["/" + p for p in paths]


def test_keep_alive_rules():
    assert parse_head(b"GET / HTTP/1.1\r\nHost: h").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked").keep_alive
    assert parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0").keep_alive
    r = parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b")
    assert r.headers["accept"] == "a, b"


@pytest.mark.parametrize("head,status", [
    (b"GET / HTTP/1.1", 400),                       # no Host
    (b"GET / HTTP/3.0\r\nHost: h", 505),
    (b"GET /\r\nHost: h", 400),                     # HTTP/0.9
    (b"GET  / HTTP/1.1\r\nHost: h", 400),
    (b"G(T / HTTP/1.1\r\nHost: h", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nHost: i", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\tfolded", 400),
])
def test_bad_heads(head, status):
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == status


def test_an_endless_head_is_431():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * (20 << 10))
    with pytest.raises(BadRequest) as caught:
        parser.next()
    assert caught.value.status == 431


# --- paths ------------------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=5), st.booleans())
def test_quoted_paths_come_back_as_their_names(names, slash):
    from docteur_core.format import objects as obj

    path = "/".join(names)
    target = "/" + quote_path(path) + ("/" if slash else "")
    refused = any(obj.refused_name(obj.encode_name(n), obj.MODE_FILE) for n in names)
    if refused:
        with pytest.raises(NotHere):
            target_key(split_target(target)[0])
        return
    assert target_key(split_target(target)[0]) == (tuple(names), slash)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="./%2eEfF5cC\\ab", max_size=30))
def test_no_target_names_a_dot_segment_or_a_slash(text):
    try:
        names, _ = target_key(split_target("/" + text)[0])
    except NotHere:
        return
    for name in names:
        assert name not in (".", "..") and "/" not in name and name


def test_targets():
    assert split_target("http://example.com/a/b?x=1#f") == ("/a/b", "x=1")
    assert split_target("http://example.com") == ("/", "")
    with pytest.raises(NotHere):
        split_target("*")
    assert target_key("/") == ((), False)
    assert target_key("//a//b/") == (("a", "b"), True)
    assert target_key("/%C3%A9t%C3%A9") == (("été",), False)
    assert target_key("/%FF") == (("\udcff",), False)  # a name that is not UTF-8
    assert target_key("/a%5Cb") == (("a\\b",), False)  # a backslash is a character
    for bad in ("/%2e%2e", "/a/%2E", "/a%2fb", "/.git", "/a/.Git/x", "/git~1",
                "/%00", "/.git.", "/a%5C.git"):
        with pytest.raises(NotHere) as caught:
            target_key(bad)
        assert caught.value.status == 404, bad
    with pytest.raises(NotHere) as caught:
        target_key("/%g0")
    assert caught.value.status == 400


# --- ranges and dates ------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=1200),
       st.one_of(st.none(), st.integers(min_value=0, max_value=1200)))
def test_one_range_as_rfc_9110_says(size, first, last):
    spec = f"bytes={first}-{'' if last is None else last}"
    got = parse_ranges(spec, size)
    if last is not None and last < first:
        assert got == []
    elif first >= size:
        assert got == []
    else:
        end = size - 1 if last is None else min(last, size - 1)
        assert got == [(first, end)]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=1200))
def test_suffix_ranges(size, n):
    got = parse_ranges(f"bytes=-{n}", size)
    if n == 0 or size == 0:
        assert got == []
    else:
        assert got == [(max(size - n, 0), size - 1)]


def test_many_or_overlapping_ranges_get_the_whole_body():
    assert parse_ranges("bytes=" + ",".join(f"{i}-{i}" for i in range(65)), 1000) is None
    assert parse_ranges("bytes=" + ",".join(["0-999"] * 4), 1000) is None
    assert parse_ranges("lines=1-2", 1000) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))
def test_http_dates_round_trip(epoch):
    assert parse_http_date(http_date(epoch)) == epoch


def test_http_dates():
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") is None  # obsolete: ignored
    assert parse_http_date("garbage") is None


# --- responses ---------------------------------------------------------------------------

class _Req:
    def __init__(self, headers=None, method="GET") -> None:
        self.headers = headers or {}
        self.method = method


def test_multipart_ranges_cover_the_parts():
    site = Site(0)
    body = bytes(range(256)) * 4
    e = Entity(200, body, '"x"', "application/octet-stream")
    r = site.respond(_Req({"range": "bytes=0-1,-2,100-"}), e)
    assert r.status == 206
    data = b"".join(s for s in r.segments)
    assert len(data) == r.length
    boundary = dict(r.headers)["Content-Type"].split("boundary=")[1].encode()
    assert data.count(b"--" + boundary) == 4
    assert data.endswith(b"--" + boundary + b"--\r\n")
    assert b"Content-Range: bytes 1022-1023/1024\r\n\r\n" + body[-2:] in data
    assert b"Content-Range: bytes 100-1023/1024\r\n\r\n" + body[100:] in data


def test_content_types_are_pythons_table_with_compressed_files_as_themselves():
    site = Site(0)
    assert site.content_type("a.html") == "text/html"
    assert site.content_type("a.tar.gz") == "application/gzip"
    assert site.content_type("a.svg") == "image/svg+xml"
    assert site.content_type("a.woff2") == "font/woff2"
    assert site.content_type("README") == "application/octet-stream"


# --- the reader's checked content -------------------------------------------------------

@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_image_content_is_checked_before_it_is_returned(tmp_path):
    small = b"small file\n"
    large = os.urandom((17 << 20) + 3)
    forged = os.urandom(len(large))
    good = tmp_path / "good.img"
    forge.hostile_image(good, [("100644", "large.bin", Obj("blob", large)),
                               ("100644", "small.txt", Obj("blob", small))])
    with Image.open(str(good), "light") as image:
        assert image.content("small.txt") == small
        spool = image.content(image.node("large.bin"))
        try:
            assert spool.read() == large
        finally:
            spool.close()
    bad = tmp_path / "bad.img"
    forge.hostile_image(bad, [("100644", "large.bin",
                               Obj("blob", forged, oid=object_id("blob", large)))])
    with Image.open(str(bad), "light") as image:
        with pytest.raises(DamagedImage, match="SHA-1 mismatch"):
            image.content("large.bin")
