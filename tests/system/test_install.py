"""docteur installs like any Python tool: from its wheel, into a fresh
virtual environment outside the clone, and works from there.

Real builds (setuptools' own build backend, in a build environment of its
own), a real `pip install`, real nbdkit, nbdinfo and (slow) QEMU. Nothing
here runs in the clone: the repository's files are copied first (what git
tracks plus new files it does not ignore), so the build leaves no
`build/` or `*.egg-info` in the tree, and every command runs from a
temporary folder with relative paths, the installed `docteur` first on PATH
and no PYTHONPATH.

- the wheel holds the package's data files (plugin, guest init, demo site,
  Solo5 sources, py.typed, LICENSE) and says `License-Expression: MIT`;
- installed from it: make, verify, serve (background), ls/cat over NBD,
  nbdinfo, and raw `nbdkit python "$(docteur plugin-path)"` going to the
  background with a relative image=;
- the README's quick tour, its lines that need only docteur and git, as
  written, and its host line for the guest's entry point; the reading
  verbs' --help names http(s):// URLs;
- (slow) `docteur boot` from the installed package;
- the sdist holds the test suite and what the README names, and part of the
  suite passes from the unpacked sdist, importing docteur_core from there.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.support import REPO_ROOT, alive, free_port

pytestmark = [pytest.mark.nbdkit, pytest.mark.qemu, pytest.mark.slow]

DATE = "2026-01-01T00:00:00Z"
TEXT = b"Hello from an installed docteur.\n" * 3
NESTED = "nested/deeper/leaf.txt"
NESTED_TEXT = "d\u00e9j\u00e0 vu, nested\n".encode()
BINARY = "bin/blob.bin"
BINARY_DATA = bytes(range(256)) * 8 + bytes(random.Random(7).getrandbits(8) for _ in range(30_000))


def run(cmd: list[str], *, timeout: float = 600, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capture its output; on failure, show it all."""
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{cmd} exited with {done.returncode}\n"
            f"--- stdout\n{done.stdout.decode(errors='replace')}\n"
            f"--- stderr\n{done.stderr.decode(errors='replace')}")
    return done


def outside_the_clone(path: Path) -> Path:
    path = path.resolve()
    assert not path.is_relative_to(REPO_ROOT), f"{path} is inside the clone"
    return path


# --- building ---------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


def repository_files() -> list[str]:
    """What a clone holds now: tracked files (less deleted ones) and new,
    not ignored ones."""
    out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
              cwd=REPO_ROOT).stdout.decode()
    names = sorted({n for n in out.split("\0") if n})
    return [n for n in names if os.path.lexists(REPO_ROOT / n)]


def copy_repository(target: Path) -> None:
    for name in repository_files():
        source, dest = REPO_ROOT / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        elif source.is_file():
            dest.write_bytes(source.read_bytes())
            dest.chmod(source.stat().st_mode & 0o777)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dist:
    """The wheel and the sdist, built from a copy of the repository by
    setuptools' build backend (pyproject's setuptools>=77, from the index)."""
    root = outside_the_clone(tmp_path_factory.mktemp("dist"))
    source, out, buildenv = root / "source", root / "out", root / "buildenv"
    copy_repository(source)
    run([sys.executable, "-m", "venv", str(buildenv)])
    run([str(buildenv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", "setuptools>=77"])
    out.mkdir()
    run([str(buildenv / "bin" / "python"), "-c",
         "import sys; from setuptools import build_meta as b; out = sys.argv[1]; "
         "print(b.build_sdist(out)); print(b.build_wheel(out))", str(out)],
        cwd=source)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(out.iterdir())
    return Dist(wheels[0], sdists[0])


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        """A user's shell with the environment activated: its bin first on
        PATH (the clone's .venv off it), no PYTHONPATH."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
        clone_bin = str(REPO_ROOT / ".venv" / "bin")
        rest = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                if p and os.path.realpath(p) != os.path.realpath(clone_bin)]
        env["PATH"] = os.pathsep.join([str(self.bin), *rest])
        env["VIRTUAL_ENV"] = str(self.venv)
        return env


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Installed:
    """A fresh virtual environment, outside the clone, with the wheel
    installed by pip (dulwich from the index)."""
    venv = outside_the_clone(tmp_path_factory.mktemp("installed")) / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", str(dist.wheel)])
    site = run([str(venv / "bin" / "python"), "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=venv).stdout.decode().strip()
    return Installed(venv, Path(site))


@pytest.fixture()
def workdir(tmp_path) -> Path:
    """A folder outside the clone holding SRC (text, binary, nested files)."""
    work = outside_the_clone(tmp_path)
    files = {"hello.txt": TEXT, NESTED: NESTED_TEXT, BINARY: BINARY_DATA}
    for name, data in files.items():
        (work / "SRC" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "SRC" / name).write_bytes(data)
    return work


def docteur_in(installed: Installed, work: Path):
    def docteur(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(["docteur", *args], cwd=work, env=installed.env(), check=check,
                   timeout=timeout)
    return docteur


# --- processes ----------------------------------------------------------------

def nbdkits_mentioning(needle: str | int) -> list[str]:
    """Live nbdkit processes whose command line contains `needle` (a port:
    as a whole argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "nbdkit" \
                and any(a == str(needle).encode() if isinstance(needle, int)
                        else needle.encode() in a for a in argv) \
                and alive(int(entry.name)):
            found.append(f"{entry.name}: {b' '.join(argv).decode(errors='replace')}")
    return found


def stop(pid: int, seconds: float = 15.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"nbdkit {pid} still runs {seconds} s after SIGTERM"


def pid_from(pidfile: Path, patience: float = 60.0) -> int:
    """The pid in `pidfile`: nbdkit's daemon writes it after its parent exits."""
    deadline = time.monotonic() + patience
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, f"no pid in {pidfile}"
        time.sleep(0.02)
    pid = int(pidfile.read_text().strip())
    assert alive(pid), f"pid {pid} from {pidfile} is not running"
    return pid


# --- the wheel ----------------------------------------------------------------

@pytest.mark.solo5
def test_the_wheel_holds_the_package_data(dist):
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        for needed in ["docteur_core/serve/plugin.py",
                       "docteur_core/boot/initramfs/init",
                       "docteur_core/boot/initramfs/guest_run.py",
                       "docteur_core/demo/site/index.html",
                       "docteur_core/py.typed"]:
            assert needed in names, f"{needed} is not in {dist.wheel.name}"
        solo5_c = {n for n in names if n.startswith("docteur_core/boot/solo5/guest/")
                   and n.endswith(".c")}
        expected_c = {f"docteur_core/boot/solo5/guest/{p.name}"
                      for p in (REPO_ROOT / "docteur_core/boot/solo5/guest").glob("*.c")}
        assert expected_c and solo5_c == expected_c
        info = [n for n in names if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")]
        dist_info = info[0].split("/")[0]
        licenses = [n for n in names if n.startswith(dist_info + "/") and n.endswith("LICENSE")]
        assert licenses, f"no LICENSE in {dist_info}"
        assert wheel.read(licenses[0]) == (REPO_ROOT / "LICENSE").read_bytes()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Author: The docteur authors" in metadata.splitlines()
    assert [line for line in metadata.splitlines() if line.startswith("Project-URL: ")]
    assert "docteur = docteur_core.cli:main" in entry_points
    # Nothing of the clone's tooling or tests in the wheel.
    assert not [n for n in names if n.startswith(("tests/", "nbd_plugin/", "qemu/", ".ci/"))]


# --- installed ----------------------------------------------------------------

def test_installed_wheel_makes_serves_and_reads(installed, workdir):
    docteur = docteur_in(installed, workdir)
    env = installed.env()
    assert run(["sh", "-c", "command -v docteur"], env=env, cwd=workdir).stdout.decode().strip() \
        == str(installed.bin / "docteur")

    plugin = Path(docteur("plugin-path").stdout.decode().strip())
    assert plugin.is_file()
    assert plugin.resolve().is_relative_to(installed.site_packages.resolve()), plugin
    assert not plugin.resolve().is_relative_to(REPO_ROOT)

    made = docteur("make", "--date", DATE, "SRC", "disk.img")
    assert (workdir / "disk.img").is_file(), made.stderr
    verified = docteur("verify", "disk.img").stdout.decode()
    commit = docteur("info", "disk.img").stdout.decode()
    assert verified and commit

    # docteur serve: to the background, the URI alone on stdout.
    port = free_port()
    served = docteur("serve", "disk.img", "--port", str(port), "--pidfile", "serve.pid")
    uri = f"nbd://127.0.0.1:{port}/"
    pid = pid_from(workdir / "serve.pid")
    try:
        # docteur serve itself listens, in the background, and runs an nbdkit
        # per client (serve/front.py)
        assert b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert served.stdout.decode() == uri + "\n"
        listing = docteur("ls", uri).stdout.decode()
        assert {line.split("\t")[1] for line in listing.splitlines()} \
            == {"hello.txt", "bin/", "nested/"}
        assert docteur("ls", uri, "nested/deeper").stdout.decode().split("\t")[1] \
            == "leaf.txt\n"
        assert docteur("cat", uri, BINARY).stdout == BINARY_DATA
        assert docteur("cat", uri, NESTED).stdout == NESTED_TEXT
        assert docteur("cat", uri, "hello.txt").stdout == TEXT
        info = run(["nbdinfo", uri], env=env, cwd=workdir).stdout.decode()
        described = [line for line in info.splitlines() if "docteur image: commit " in line]
        assert described, info
        head = docteur("info", uri).stdout.decode()
        assert head == commit
    finally:
        stop(pid)
    assert not nbdkits_mentioning(port)
    assert not nbdkits_mentioning(str(workdir))

    # Raw nbdkit, as the README says: it goes to the background and chdirs
    # to /, and the relative image= still names ./disk.img.
    port2 = free_port()
    run(["sh", "-c", f'nbdkit --ipaddr 127.0.0.1 --port {port2} --pidfile raw.pid '
                     f'python "$(docteur plugin-path)" image=disk.img'],
        env=env, cwd=workdir, timeout=120)
    pid2 = pid_from(workdir / "raw.pid")
    try:
        assert [p.split(":")[0] for p in nbdkits_mentioning(port2)] == [str(pid2)]
        assert os.readlink(f"/proc/{pid2}/cwd") == "/"
        assert docteur("cat", f"nbd://127.0.0.1:{port2}/", BINARY).stdout == BINARY_DATA
        assert docteur("cat", f"nbd://127.0.0.1:{port2}/", NESTED).stdout == NESTED_TEXT
    finally:
        stop(pid2)
    assert not nbdkits_mentioning(port2)


def test_installed_plugin_dumps_its_version(installed, workdir):
    """`nbdkit python "$(docteur plugin-path)" --dump-plugin`: nbdkit's lines,
    then the plugin's own, naming the installed package; exit status 0."""
    docteur = docteur_in(installed, workdir)
    env = installed.env()
    plugin = Path(docteur("plugin-path").stdout.decode().strip())
    dumped = run(["sh", "-c", 'nbdkit python "$(docteur plugin-path)" --dump-plugin'],
                 env=env, cwd=workdir).stdout.decode()
    version = docteur("--version").stdout.decode().split()[-1]
    assert f"docteur_version={version}" in dumped.splitlines(), dumped
    package_lines = [line for line in dumped.splitlines() if line.startswith("docteur_package=")]
    assert package_lines == [f"docteur_package={plugin.resolve().parents[1]}"], dumped



def readme_tour() -> list[str]:
    """The README's quick tour, one command line a list item, comments off."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## A quick tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.fuse
def test_the_readme_tour_runs_from_the_installed_wheel(installed, tmp_path):
    """The quick tour's lines that need only docteur and git (its first line,
    through `diff`) run as written, in an empty folder outside the clone,
    each with exit status 0; its reading lines read what its first line
    wrote. So does docs/reading.md's host line for the guest's entry point."""
    work = outside_the_clone(tmp_path)
    env = installed.env()
    tour = readme_tour()
    offline = tour[:[i for i, line in enumerate(tour) if line.startswith("docteur diff")][0] + 1]
    assert len(offline) >= 7 and offline[1].startswith("docteur make "), offline
    outputs = {}
    for line in offline:
        outputs[line] = run(["sh", "-ec", line], cwd=work, env=env, timeout=120).stdout
    assert (work / "disk.img").is_file() and (work / "out" / "index.html").is_file()
    read = outputs["docteur ls disk.img docs; docteur cat disk.img index.html"]
    assert b"guide.md" in read and read.endswith((work / "site" / "index.html").read_bytes())
    # docs/reading.md's host line for the guest's entry point (no -S: in a venv,
    # docteur_core is in site-packages).
    reading = (REPO_ROOT / "docs" / "reading.md").read_text()
    (guest,) = [line.split("  #")[0].strip() for line in reading.splitlines()
                if "-m docteur_core.reader.guest disk.img" in line]
    guest = guest.replace(" [--mode fast]", " --mode fast").replace("PATH", "docs/guide.md")
    assert run(["sh", "-ec", guest], cwd=work, env=env).stdout \
        == (work / "site" / "docs" / "guide.md").read_bytes()
    # The reading verbs say in --help that an http(s):// URL works.
    for verb in ("ls", "cat", "stat", "tree", "info", "extract", "diff", "mount", "verify"):
        helped = run(["docteur", verb, "--help"], cwd=work, env=env).stdout.decode()
        assert "http(s)://" in helped, verb


@pytest.mark.slow
def test_installed_wheel_boots_a_guest(installed, workdir):
    """`docteur boot` from the installed package: its guest is built from
    that package's own files (the cache is the one the other guest tests
    use: $DOCTEUR_CACHE, else ~/.cache/docteur)."""
    docteur = docteur_in(installed, workdir)
    env = installed.env()
    root = run([str(installed.bin / "python"), "-c",
                "from docteur_core.boot import guest_image as g; print(g.PACKAGE_ROOT)"],
               env=env, cwd=workdir).stdout.decode().strip()
    assert Path(root).resolve() == installed.site_packages.resolve()
    docteur("make", "--date", DATE, "SRC", "disk.img")
    booted = docteur("boot", "disk.img", "cat", NESTED, timeout=600)
    assert booted.stdout == NESTED_TEXT, booted.stderr.decode(errors="replace")
    assert not nbdkits_mentioning(str(workdir))


# --- the sdist ----------------------------------------------------------------

@pytest.fixture(scope="module")
def unpacked_sdist(dist, tmp_path_factory) -> Path:
    target = outside_the_clone(tmp_path_factory.mktemp("sdist"))
    with tarfile.open(dist.sdist) as tar:
        tar.extractall(target, filter="data")
    (folder,) = list(target.iterdir())
    return folder


def test_the_sdist_holds_the_tests_and_runs_them(unpacked_sdist):
    folder = unpacked_sdist
    for needed in ["tests/helpers/support.py", "tests/format/test_format.py", "nbd_plugin/docteur_plugin.py",
                   "qemu", "docteur_core/demo/site/index.html",
                   "docteur_core/boot/initramfs/init", "LICENSE", "README.md",
                   "pyproject.toml", ".ci/setup"]:
        assert (folder / needed).exists(), f"{needed} is not in the sdist"
    assert (folder / "LICENSE").read_bytes() == (REPO_ROOT / "LICENSE").read_bytes()
    assert not list(folder.rglob("__pycache__"))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(folder)
    where = run([sys.executable, "-c",
                 "import docteur_core, tests.helpers.support as s; "
                 "print(docteur_core.__file__); print(s.REPO_ROOT)"],
                cwd=folder, env=env).stdout.decode().split()
    assert Path(where[0]).resolve() == (folder / "docteur_core" / "__init__.py").resolve()
    assert Path(where[1]).resolve() == folder.resolve()

    # A conftest-free check inside the run itself: a test file that fails
    # unless docteur_core comes from the unpacked sdist.
    probe = folder / "tests" / "test_zz_from_sdist_probe.py"
    probe.write_text(
        "import docteur_core, pathlib\n"
        "def test_imported_from_here():\n"
        f"    assert pathlib.Path(docteur_core.__file__).resolve().parent == "
        f"pathlib.Path({str(folder / 'docteur_core')!r}).resolve()\n")
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/format/test_format.py", "tests/blockdev/test_block.py",
                "tests/serve/test_plugin_checks.py",
                probe.relative_to(folder).as_posix()],
               cwd=folder, env=env, check=False, timeout=600)
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output
    assert re.search(r"\b\d+ passed\b", output) and not re.search(r"\b(failed|errors?)\b", output), output
