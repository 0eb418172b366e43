"""The sans-IO rules of HTTP range reads (blockdev/http_range.py): what a
status and headers mean for a request, without a socket. The same rules over
a real nginx are in tests/reader/test_http_images.py."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from docteur_core.blockdev.http_range import (OriginChanged, Partial, Redirect, RemoteError,
                                              Validator, fetch_span, judge, parse_content_range,
                                              parse_url, pin_validator, request_headers, shown)

URL = "https://bucket.example/c0ffee.img?X-Amz-Signature=s3cr3t&X-Amz-Date=2026"
TAG = '"5f1-abc"'


def partial(start, end, total, etag=TAG, **more):
    headers = {"content-range": f"bytes {start}-{end - 1}/{total}",
               "content-length": str(end - start), "etag": etag}
    headers.update(more)
    return headers


def test_query_string_is_kept_byte_for_byte_and_hidden_in_messages():
    t = parse_url("https://b.example:8443/a%2Fb/img?z=1&a=%2B+x#frag")
    assert (t.scheme, t.host, t.port) == ("https", "b.example", 8443)
    assert t.target == "/a%2Fb/img?z=1&a=%2B+x"
    assert parse_url("http://h?x=1").target == "/?x=1"
    assert parse_url("http://h").port == 80 and parse_url("http://h").target == "/"
    assert "s3cr3t" not in shown(URL) and shown(URL).endswith("c0ffee.img?...")


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///x", "http://u:p@h/x",
                                 "http://h/a b", "http://h:99999/x", "http://h/é"])
def test_unusable_urls_are_refused(url):
    with pytest.raises(RemoteError):
        parse_url(url)


def test_first_answer_pins_size_and_validator():
    got = judge(URL, 206, "Partial Content", partial(0, 4096, 10000), 0, 4096, None, None)
    assert isinstance(got, Partial)
    assert (got.start, got.end, got.total, got.validator.etag) == (0, 4096, 10000, TAG)


def test_request_binds_to_the_pinned_version():
    assert request_headers(0, 512, None) == {"Range": "bytes=0-511",
                                             "Accept-Encoding": "identity"}
    assert request_headers(512, 1024, Validator(TAG))["If-Match"] == TAG
    dated = request_headers(0, 1, Validator(None, 'W/"x"', "Tue, 01 Dec 2026 10:00:00 GMT"))
    assert "If-Match" not in dated  # If-Match needs a strong tag
    assert dated["If-Unmodified-Since"] == "Tue, 01 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize("status,headers", [
    (412, {}),
    (416, {}),
    (206, partial(4096, 8192, 10000, etag='"other"')),
    (206, partial(4096, 8192, 20000)),
    (206, partial(4096, 8192, 10000, etag='W/"5f1-abc"')),
])
def test_a_changed_object_is_one_error(status, headers):
    with pytest.raises(OriginChanged, match="changed at the origin since it was opened"):
        judge(URL, status, "", headers, 4096, 8192, Validator(TAG), 10000)


def test_last_modified_is_the_validator_without_an_etag():
    pinned = pin_validator({"last-modified": "Mon, 30 Nov 2026 10:00:00 GMT"})
    later = {"content-range": "bytes 0-9/100", "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT"}
    with pytest.raises(OriginChanged):
        judge(URL, 206, "", later, 0, 10, pinned, 100)
    same = dict(later, **{"last-modified": "Mon, 30 Nov 2026 10:00:00 GMT"})
    assert isinstance(judge(URL, 206, "", same, 0, 10, pinned, 100), Partial)


@pytest.mark.parametrize("status,headers,words", [
    (200, {}, "ignores range requests"),
    (403, {}, "access denied (HTTP 403"),
    (401, {}, "access denied (HTTP 401"),
    (404, {}, "no such object"),
    (500, {}, "answered HTTP 500"),
    (302, {}, "redirect without a Location"),
    (206, {"content-range": "bytes */100"}, "without a usable Content-Range"),
    (206, {"content-range": "bytes 0-9/100", "content-encoding": "gzip"}, "gzip-encoded"),
    (206, {"content-range": "bytes 0-9/100", "content-type": "multipart/byteranges"},
     "multipart"),
    (206, partial(0, 4096, 10000), "asked for bytes 4096-8191"),
    (206, dict(partial(4096, 8192, 10000), **{"content-length": "7"}), "Content-Length 7"),
])
def test_each_bad_answer_is_one_line_naming_the_url_without_its_query(status, headers, words):
    with pytest.raises(RemoteError) as err:
        judge(URL, status, "", headers, 4096, 8192, Validator(TAG), 10000)
    text = str(err.value)
    assert words in text and "\n" not in text
    assert text.startswith("https://bucket.example/c0ffee.img?...") and "s3cr3t" not in text
    assert not isinstance(err.value, OriginChanged)


def test_redirects_resolve_against_the_request_url():
    got = judge(URL, 307, "", {"location": "/other/c0ffee.img?sig=2"}, 0, 10, None, None)
    assert isinstance(got, Redirect) and got.url == "https://bucket.example/other/c0ffee.img?sig=2"


def test_the_last_range_may_be_short():
    got = judge(URL, 206, "", partial(8192, 10000, 10000), 8192, 12288, Validator(TAG), 10000)
    assert (got.start, got.end) == (8192, 10000)


@given(st.integers(0, 2**40), st.integers(0, 2**20), st.integers(1, 2**41))
def test_content_range_round_trip(a, n, extra):
    b = a + n
    assert parse_content_range(f"bytes {a}-{b}/{b + extra}") == (a, b + 1, b + extra)
    assert parse_content_range(f"bytes {b + 1}-{a}/{b + extra}") is None  # backwards
    assert parse_content_range(f"bytes {a}-{b}/{b}") is None  # past the end


@given(st.integers(0, 2**20), st.integers(1, 2**16), st.integers(1, 2**22),
       st.sampled_from([512, 4096, 65536]))
def test_fetch_span_covers_the_read_in_whole_chunks_within_the_object(offset, length,
                                                                       capacity, chunk):
    offset %= capacity  # the device clips reads to the object first
    length = min(length, capacity - offset)
    start, end = fetch_span(offset, length, capacity, chunk)
    assert start % chunk == 0 and start <= offset
    assert end <= capacity
    assert end >= min(capacity, offset + length)
    assert end == capacity or end % chunk == 0
    assert end - start < length + 2 * chunk


@given(st.integers(0, 1 << 40),
       st.integers(1, 1 << 24).flatmap(lambda most: st.tuples(st.integers(0, 64 * most),
                                                              st.just(most))))
def test_request_spans_cover_a_read_in_order_none_too_large(start, length_most):
    from docteur_core.blockdev.http_range import request_spans

    length, most = length_most
    spans = request_spans(start, start + length, most)
    assert all(0 < e - s <= most for s, e in spans)
    assert [s for s, _ in spans] == ([start] + [e for _, e in spans[:-1]] if spans else [])
    assert (spans[-1][1] if spans else start) == start + length
    assert len(spans) == -(-length // most)
