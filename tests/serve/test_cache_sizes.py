"""`docteur serve --cache-size SIZE`: checked while parsing (exit 2, serve's
usage), by the rule of nbdkit's cache filter, with the real nbdkit as the
oracle; a good SIZE reaches nbdkit exactly as written."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core import cli
from docteur_core.serve.sizes import cache_size_problem
from tests.helpers import cli as run
from tests.helpers.serving import cmdline, copy_image

pytestmark = [pytest.mark.nbdkit]


def docteur(*args):
    return run.docteur(*args, text=True)


def cat(uri: str, path: str):
    return run.docteur("cat", uri, path)


def nbdkit_takes(size: str) -> bool:
    """Whether the real nbdkit's cache filter starts with cache-max-size=SIZE."""
    proc = subprocess.run(["nbdkit", "-U", "-", "--filter=cache", "memory", "16M",
                           f"cache-max-size={size}", "--run", "true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 or "nbdkit: error:" in proc.stderr, proc.stderr
    return proc.returncode == 0


TABLE = ["64M", "64m", "1G", "1048576", "1M", "1024K", "2048S", "2048s", "1T", "7E",
         "9223372036854775807", "00000001M",
         "512K", "1048575", "0", "2047s", "1b", "8E", "9223372036854775808", "64MiB", "1.5G",
         "-1", "", "foo", "auto", "0x100000", "M", "64 M", "1Mb"]


@pytest.mark.parametrize("size", TABLE)
def test_the_rule_is_nbdkits(size):
    if size == "auto":  # ours, not nbdkit's: serve/options.py's cache_size maps it
        assert cache_size_problem(size) is not None and not nbdkit_takes(size)
        return
    assert (cache_size_problem(size) is None) == nbdkit_takes(size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.from_regex(r"\A[0-9]{1,21}[bBkKmMgGtTpPeEsSxi]?\Z"),
    st.text(alphabet="0123456789kKmMgGsSeE.+- xi", max_size=8),
))
def test_generated_sizes_agree_with_nbdkit(size):
    """Ours accepts only what nbdkit accepts, and everything it accepts but a
    leading blank or '+' (strtoimax's leniency, refused here on purpose)."""
    ours = cache_size_problem(size) is None
    theirs = nbdkit_takes(size)
    if size[:1] in (" ", "+"):
        assert not ours
    else:
        assert ours == theirs, (size, cache_size_problem(size))


@pytest.mark.parametrize("value,why", [
    ("foo", "is not a size: whole bytes, or a number followed by K, M, G, T, P, E (powers of "
            "1024) or S (512-byte sectors), e.g. 64M or 1G"),
    ("", "is not a size"),
    ("1.5G", "is not a size"),
    ("64MiB", "is not a size"),
    ("-1", "is not a size"),
    ("512K", "is too small: nbdkit's cache filter needs at least 1M"),
    ("0", "is too small"),
    ("8E", "is too big: nbdkit takes at most 2**63 - 1 bytes"),
])
def test_a_bad_cache_size_is_a_usage_error(capsys, value, why):
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", f"--cache-size={value}", "disk.img"])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("usage: docteur serve ")
    assert lines[-1].startswith(f"docteur serve: error: argument --cache-size: {value!r} {why}")


def test_a_bad_cache_size_starts_nothing(images, tmp_path):
    image = copy_image(images, "one", tmp_path / "disk.img")
    pidfile = tmp_path / "nbdkit.pid"
    proc = docteur("serve", "--unix", tmp_path / "s.sock", "--pidfile", pidfile,
                   "--cache-size", "foo", image)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("usage: docteur serve ") and "Traceback" not in proc.stderr
    assert not pidfile.exists() and not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("size", ["64m", "2048S", "1073741824"])
def test_a_good_cache_size_reaches_nbdkit_as_written(images, tmp_path, size):
    """The cache filter serves URLs (an image file is read by nbdkit's file
    plugin, one nbdkit per client): nbdkit.command passes SIZE as written,
    and nbdkit serves with it."""
    from docteur_core.serve.nbdkit import Listen, Server, command

    image = copy_image(images, "one", tmp_path / "disk.img")

    def argv(listen, pidfile):
        return command(image, listen, cache_size=size, pidfile=pidfile, exit_with_parent=True)

    with Server(argv, Listen(unix=tmp_path / "s.sock")) as server:
        assert f"cache-max-size={size}" in cmdline(server.proc.pid)
        got = cat(server.uri, "README.txt")
    assert got.returncode == 0 and got.stdout == (images["one"]["src"] / "README.txt").read_bytes()
