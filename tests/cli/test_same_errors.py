"""The same mistake, the same words, from every verb.

- a file that is no image at all (a text, random bytes, an empty file, a
  tar, a squashfs, zeros) is `not a docteur image`, one line naming the
  file, from every command that takes an image; an image with damage in it
  stays `damaged image`;
- a bad option value is a usage error (exit 2, the verb's usage line),
  worded by the shared type in `docteur_core/options.py`;
- `make --date` takes a plain date and a zone-less date-time, as UTC.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docteur_core import cli
from docteur_core.make import make_image
from docteur_core.errors import DamagedImage, NotAnImage
from docteur_core.format import layout
from docteur_core.reader.image import Image
from tests.helpers.support import REPO_ROOT, free_port
from tests.helpers.gitoracle import SITE

DATE = "2026-01-01T00:00:00Z"


def docteur(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


# -- not an image ---------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind that is not an image, and a real image."""
    base = tmp_path_factory.mktemp("notimages")
    image = base / "good.img"
    make_image(SITE, image, date=DATE)
    out = {"good": image}
    out["text"] = base / "notes.txt"
    out["text"].write_bytes((REPO_ROOT / "README.md").read_bytes())
    out["random"] = base / "random.bin"
    out["random"].write_bytes(random.Random(7).randbytes(70000))
    out["empty"] = base / "empty"
    out["empty"].write_bytes(b"")
    out["zeros"] = base / "zeros"
    out["zeros"].write_bytes(bytes(8192))
    out["tar"] = base / "site.tar"
    with tarfile.open(out["tar"], "w") as tar:
        tar.add(SITE, arcname="site")
    out["squashfs"] = base / "site.sqfs"
    subprocess.run(["mksquashfs", str(SITE), str(out["squashfs"]), "-quiet", "-noappend",
                    "-no-progress"], check=True, capture_output=True)
    return out


KINDS = ["text", "random", "empty", "zeros", "tar", "squashfs"]

# verb -> its arguments around IMAGE ({} is the image)
VERBS = {
    "ls": ["{}"],
    "cat": ["{}", "index.html"],
    "stat": ["{}", "index.html"],
    "tree": ["{}"],
    "info": ["{}"],
    "verify": ["{}"],
    "verify --quick": ["--quick", "{}"],
    "verify --json": ["--json", "{}"],
    "extract": ["{}", "{dest}"],
    "serve": ["--port", "{port}", "{}"],
    "boot": ["{}", "ls"],
    "mount": ["{}", "{mnt}"],
    "diff (old)": ["{}", "{good}"],
    "diff (new)": ["{good}", "{}"],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", list(VERBS))
def test_every_command_says_not_a_docteur_image(files, tmp_path, capfd, verb, kind):
    """In this process (`cli.main`, as `docteur` runs it) for speed; serve
    and boot still start their real programs if they get that far."""
    path = files[kind]
    (tmp_path / "mnt").mkdir()
    args = [a.format(path, dest=tmp_path / "dest", port=free_port(), good=files["good"],
                     mnt=tmp_path / "mnt") for a in VERBS[verb]]
    status = cli.main([verb.split()[0], *map(str, args)])
    assert status == (2 if verb.startswith("diff") else 1)
    out, err = capfd.readouterr()
    if verb == "verify --json":  # the report still comes, with the one problem
        doc = json.loads(out)
        assert doc["ok"] is False and [p["region"] for p in doc["problems"]] == ["image"]
        assert doc["problems"][0]["what"].startswith("not a docteur image (")
    else:
        assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"docteur {verb.split()[0]}: ")
    assert str(path) in lines[0] and "not a docteur image" in lines[0], lines[0]
    assert "damaged" not in lines[0]
    assert not (tmp_path / "dest").exists()


def test_an_image_with_damage_is_still_damaged(files, tmp_path):
    """The PACK signature gone but the IDX intact: a damaged image, not
    another kind of file (and the other way round for the IDX)."""
    data = bytearray(files["good"].read_bytes())
    data[28:32] = b"JUNK"
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(data))
    proc = docteur("ls", bad)
    assert proc.returncode == 1 and "damaged image" in proc.stderr
    assert "not a docteur image" not in proc.stderr
    proc = docteur("verify", bad)
    assert proc.returncode == 1 and "bad PACK signature" in proc.stderr
    idx_offset = struct.unpack_from("<Q", data, 20)[0]
    data[idx_offset:idx_offset + 4] = b"JUNK"
    bad.write_bytes(bytes(data))
    proc = docteur("ls", bad)
    assert proc.returncode == 1 and f"{bad}: not a docteur image" in proc.stderr


def test_the_rule_on_bytes():
    assert layout.not_an_image(b"", 0) == "empty file"
    assert "too small" in layout.not_an_image(b"x" * 39, 39)
    head = bytes(28) + b"PACK" + bytes(8)
    assert layout.not_an_image(head, 4096) is None
    idx = b"\xfftOc" + struct.pack(">I", 2)
    assert layout.not_an_image(bytes(40), 4096, idx) is None
    assert layout.not_an_image(bytes(40), 4096, b"\xfftOc" + struct.pack(">I", 3)) is not None


@given(head=st.binary(min_size=40, max_size=40), idx=st.binary(max_size=8),
       size=st.integers(40, 1 << 40))
def test_the_rule_is_the_two_signatures(head, idx, size):
    pack = head[28:32] == b"PACK"
    found = idx == b"\xfftOc\x00\x00\x00\x02"
    assert (layout.not_an_image(head, size, idx) is None) == (pack or found)


def test_not_an_image_is_a_damaged_image_to_python_callers(files):
    """Code that handles DamagedImage handles it too (the plugin, fuzzers)."""
    with pytest.raises(NotAnImage, match="not a docteur image") as caught:
        Image.open(files["tar"])
    assert isinstance(caught.value, DamagedImage)


# -- usage mistakes ---------------------------------------------------------------

def usage_error(argv: list[str], capsys) -> str:
    """Parse `argv` with the real parser: its exit status must be 2; the
    lines it printed on stderr."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


# Each verb that takes the option, with the arguments it needs besides.
BLOCK_SIZE_VERBS = {
    "make": ["SRC", "OUT.img"], "ls": ["I.img"], "cat": ["I.img", "p"], "stat": ["I.img", "p"],
    "tree": ["I.img"], "info": ["I.img"], "extract": ["I.img", "DEST"],
    "diff": ["A.img", "B.img"], "mount": ["I.img", "MNT"],
}


@pytest.mark.parametrize("value", ["1000", "0", "-512", "256", "2147483648", "4k", "", "0x200"])
@pytest.mark.parametrize("verb", list(BLOCK_SIZE_VERBS))
def test_a_bad_block_size_is_the_same_usage_error_everywhere(capsys, verb, value):
    err = usage_error([verb, *BLOCK_SIZE_VERBS[verb], f"--block-size={value}"], capsys)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: docteur {verb} ")
    assert lines[-1] == (f"docteur {verb}: error: argument --block-size: {value!r} is not a "
                         "block size: a power of two from 512 to 1073741824 (1 GiB)")


LIMIT_VERBS = {
    "--max-paths": {"ls": ["I.img"], "verify": ["I.img"], "extract": ["I.img", "DEST"],
                    "diff": ["A.img", "B.img"], "tree": ["I.img"]},
    "--max-object-size": {"cat": ["I.img", "p"], "verify": ["I.img"],
                          "diff": ["A.img", "B.img"]},
    "--max-lookup-bytes": {"stat": ["I.img", "p"], "diff": ["A.img", "B.img"],
                           "mount": ["I.img", "MNT"]},
    "--zopfli-iterations": {"make": ["SRC", "OUT.img"]},
}


@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5", ""])
@pytest.mark.parametrize("option,verb", [(o, v) for o, verbs in LIMIT_VERBS.items()
                                         for v in verbs])
def test_a_bad_count_is_the_same_usage_error_everywhere(capsys, option, verb, value):
    err = usage_error([verb, *LIMIT_VERBS[option][verb], f"{option}={value}"], capsys)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: docteur {verb} ")
    assert lines[-1] == (f"docteur {verb}: error: argument {option}: {value!r} is not a "
                         "positive whole number")


@pytest.mark.qemu
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout(capsys, value):
    err = usage_error(["boot", f"--timeout={value}", "I.img", "ls"], capsys)
    assert err.splitlines()[-1] == (f"docteur boot: error: argument --timeout: {value!r} is "
                                    "not a positive number of seconds")


@pytest.mark.parametrize("value,why", [
    ("yesterday", "expected RFC 3339"),
    ("2026-02-30T00:00:00Z", "day is out of range for month"),
    ("2026-02-30", "day is out of range for month"),
    ("1969-12-31T23:59:59Z", "before 1970 cannot be recorded in a commit"),
    ("2026-01-01T00:00", "expected RFC 3339"),
    ("2026-01-01T25:00:00", "hour must be in 0..23"),
])
def test_a_bad_date_is_a_usage_error(capsys, value, why):
    err = usage_error(["make", "SRC", "OUT.img", f"--date={value}"], capsys)
    last = err.splitlines()[-1]
    assert last.startswith(f"docteur make: error: argument --date: {value!r}: ")
    assert why in last


@pytest.mark.parametrize("value,why", [
    ("nobody", "expected 'Name <email>'"),
    ("<a@b>", "expected 'Name <email>'"),
    ("Foo <>", "the email is empty, and the OCaml docteur cannot read a commit with an "
               "empty email"),
    ("Foo <a@b> <c@d>", "expected 'Name <email>'"),
    ("", "expected 'Name <email>'"),
])
def test_a_bad_author_is_a_usage_error(capsys, value, why):
    err = usage_error(["make", "SRC", "OUT.img", f"--author={value}"], capsys)
    lines = err.splitlines()
    assert lines[0].startswith("usage: docteur make ")
    assert lines[-1] == f"docteur make: error: argument --author: {value.strip()!r}: {why}"


@pytest.mark.parametrize("value", ["", "-x", "--upload-pack=x", "a\nb"])
@pytest.mark.parametrize("verb,option", [("make", "--branch"), ("diff", "--old-branch"),
                                         ("diff", "--new-branch")])
def test_a_bad_branch_name_is_the_same_usage_error_everywhere(capsys, verb, option, value):
    err = usage_error([verb, "A", "B", f"{option}={value}"], capsys)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: docteur {verb} ")
    assert lines[-1] == (f"docteur {verb}: error: argument {option}: {value!r} is not a branch, "
                         "tag or commit name: it must not be empty, start with '-', or hold a "
                         "NUL or a newline")


def test_make_options_are_refused_before_any_work(tmp_path):
    """Real processes: a malformed --author, or --branch for a plain folder,
    is exit 2 in one line (after the usage for --author), nothing written."""
    out = tmp_path / "out.img"
    proc = docteur("make", "--author", "nobody", SITE, out)
    assert (proc.returncode, proc.stdout, out.exists()) == (2, "", False)
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: docteur make ")
    assert lines[-1] == "docteur make: error: argument --author: 'nobody': expected 'Name <email>'"
    proc = docteur("make", "--branch", "main", SITE, out)
    assert (proc.returncode, proc.stdout, out.exists()) == (2, "", False)
    assert proc.stderr == (f"docteur make: {SITE}: --branch needs a Git repository, and this "
                           "is a plain directory\n")
    proc = docteur("make", "--author", "Some One <one@example.org>", "-q", SITE, out)
    assert (proc.returncode, proc.stderr) == (0, "")  # a good one still builds


def test_the_usage_error_comes_before_any_work(tmp_path):
    """A real process: exit 2, nothing written, no traceback."""
    out = tmp_path / "out.img"
    proc = docteur("make", "--block-size", "1000", SITE, out)
    assert proc.returncode == 2 and proc.stdout == "" and not out.exists()
    assert proc.stderr.startswith("usage: docteur make ")
    assert "Traceback" not in proc.stderr


# -- --date -----------------------------------------------------------------------

def _commit_of(image: Path) -> dict:
    proc = docteur("info", "--json", image)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_plain_date_is_midnight_utc_and_a_bare_time_is_utc(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SITE, src)
    images = {}
    for name, date in (("zulu", "2026-01-01T00:00:00Z"), ("plain", "2026-01-01"),
                       ("bare", "2026-01-01T00:00:00"), ("space", "2026-01-01 00:00:00"),
                       ("paris", "2026-01-01T01:00:00+01:00")):
        images[name] = tmp_path / f"{name}.img"
        if name == "plain":  # through the command line once, its type= included
            proc = docteur("make", "-q", "--date", date, src, images[name])
            assert proc.returncode == 0, proc.stderr
        else:
            make_image(src, images[name], date=date)
    zulu = images["zulu"].read_bytes()
    for name in ("plain", "bare", "space"):
        assert images[name].read_bytes() == zulu, name
    assert _commit_of(images["plain"])["date"] == "2026-01-01T00:00:00+00:00"
    paris = _commit_of(images["paris"])  # same instant, its offset kept: another commit
    assert paris["date"] == "2026-01-01T01:00:00+01:00"
    assert paris["commit"] != _commit_of(images["zulu"])["commit"]


def test_make_help_says_how_a_date_without_zone_is_read(capsys):
    with pytest.raises(SystemExit):
        cli.main(["make", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "without a zone (2026-01-01T00:00:00) is read as UTC" in help_text
    assert "a date alone (2026-01-01) is midnight UTC" in help_text


@pytest.mark.parametrize("verb", ["ls", "verify", "extract"])
def test_a_character_device_is_named_not_called_empty(tmp_path, verb):
    """/dev/zero has no size (lseek gives 0): it was "an empty file"."""
    args = {"ls": ["/dev/zero"], "verify": ["--json", "/dev/zero"],
            "extract": ["/dev/zero", tmp_path / "out"]}[verb]
    proc = docteur(verb, *args)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"docteur {verb}: /dev/zero: not a docteur image "
                           "(a character device with no size)\n")


@pytest.fixture(scope="module")
def site_images(tmp_path_factory) -> dict[bool, Path]:
    """The example site, with and without a path index."""
    folder = tmp_path_factory.mktemp("missing-paths")
    images = {}
    for index in (True, False):
        images[index] = folder / f"site-{index}.img"
        make_image(SITE, images[index], date=DATE, path_index=index)
    return images


@pytest.mark.parametrize("index", [True, False], ids=["path-index", "no-path-index"])
@pytest.mark.parametrize("mode", ["light", "fast"])
@pytest.mark.parametrize("path, message", [
    ("nope", "/nope does not exist"),
    ("docs/nope.md", "/docs/nope.md does not exist"),
    ("nope/deeper/x.md", "/nope/deeper/x.md does not exist (/nope does not exist)"),
    ("docs/guide/gone/x.md", "/docs/guide/gone/x.md does not exist "
                             "(/docs/guide/gone does not exist)"),
    ("/docs//nope/x", "/docs/nope/x does not exist (/docs/nope does not exist)"),
])
def test_a_missing_path_is_named_whole(site_images, index, mode, path, message):
    """The error names the path asked for, then the first part missing: every
    way a reader looks a path up (path index, trees walked, the fast index)."""
    proc = docteur("cat", "--mode", mode, site_images[index], path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", f"docteur cat: {message}\n")
    proc = docteur("ls", "--mode", mode, site_images[index], path)
    assert (proc.returncode, proc.stderr) == (1, f"docteur ls: {message}\n")
