"""The builder's pure parts: identity parsing, pack entry headers, the scratch .idx."""

from __future__ import annotations

import io
import os

import pytest
from dulwich.pack import write_pack_index_v2
from hypothesis import given, settings
from hypothesis import strategies as st

from docteur_core.make import identity
from docteur_core.format.idx import encode_idx_v2
from docteur_core.format.pack import entry_header, object_id
from docteur_core.make.source import classify, redact
from docteur_core.errors import BuildError


@pytest.mark.parametrize("text, seconds, offset", [
    ("2026-01-01T00:00:00Z", 1767225600, 0),
    ("2026-01-01t00:00:00z", 1767225600, 0),
    ("2026-01-01T02:00:00+02:00", 1767225600, 7200),
    ("2025-12-31T19:30:00-04:30", 1767225600, -16200),
    ("2026-01-01 00:00:00.999+00:00", 1767225600, 0),
])
def test_dates(text, seconds, offset):
    assert identity.parse_date(text) == identity.When(seconds, offset)


def test_commit_timezone_formatting():
    raw = identity.commit_raw("4b825dc642cb6eb9a060e54bf8d69288fbee4904", b"A <a@b>",
                              identity.When(10, -16200), b"m\n")
    assert raw.splitlines()[1] == b"author A <a@b> 10 -0430"


def test_authors():
    assert identity.parse_author(None) == b"docteur <docteur@localhost>"
    assert identity.parse_author("  Zoë  Q <z@q.org> ") == "Zoë  Q <z@q.org>".encode()
    with pytest.raises(BuildError):
        identity.parse_author("a <b> <c>")


def test_message_gets_a_final_newline():
    assert identity.message_bytes("x") == b"x\n"
    assert identity.message_bytes(None) == b"docteur image\n"


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from([1, 2, 3, 4]))
def test_entry_header_round_trip(size, type_num):
    h = entry_header(type_num, size)
    assert (h[0] >> 4) & 7 == type_num
    value, shift = h[0] & 0x0F, 4
    for b in h[1:]:
        value |= (b & 0x7F) << shift
        shift += 7
    assert value == size
    assert all(b & 0x80 for b in h[:-1]) and not h[-1] & 0x80


def test_object_id_is_gits():
    assert object_id("blob", b"").hex() == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


@settings(max_examples=30)
@given(st.lists(st.tuples(st.binary(min_size=20, max_size=20),
                          st.integers(min_value=12, max_value=2**40),
                          st.integers(min_value=0, max_value=2**32 - 1)),
                unique_by=lambda e: e[0], max_size=40))
def test_idx_matches_dulwich_including_64_bit_offsets(entries):
    checksum = os.urandom(20)
    expected = io.BytesIO()
    write_pack_index_v2(expected, sorted(entries), checksum)
    assert encode_idx_v2(entries, checksum) == expected.getvalue()


@pytest.mark.parametrize("text, kind", [
    ("https://example.org/r.git", "remote"), ("http://u:p@h/r", "remote"),
    ("git://h/r", "remote"), ("ssh://git@h/r", "remote"), ("git@github.com:a/b.git", "remote"),
    ("host:path/r", "remote"), ("[::1]:r", "remote"),
])
def test_classify_remote(text, kind):
    assert classify(text).kind == kind


def test_classify_local_wins_and_colon_after_slash_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a:b").mkdir()
    assert classify("a:b").kind == "directory"
    with pytest.raises(BuildError, match="no such file or directory"):
        classify("./x:y")


def test_redact():
    assert redact("https://u:secret@h:8080/r.git") == "https://u:***@h:8080/r.git"
    assert redact("https://h/r.git") == "https://h/r.git"
