#!/usr/bin/env python3
"""Build (or find in the cache) the guest's kernel and initramfs.

    python3 -m docteur_core.boot.guest_image [--cache DIR] [--refresh-kernel] [--json]

prints the paths of the kernel and the initramfs (as JSON with --json).
`docteur boot` (runner.py) calls `prepare_guest()` directly.

- Kernel: Debian's `linux-image-amd64`, resolved to the versioned package it
  depends on, fetched with `apt-get download` (after an `apt-get update` if
  this machine has no package lists yet) and unpacked in the cache. Only the
  kernel and the virtio modules are kept; nothing is installed on the host.
  Once fetched, the cache is used as is, without asking apt again.
- Initramfs: busybox (Debian's busybox-static), the virtio modules the disk
  needs (those not built in, in dependency order), Debian's python3.11 with
  its shared libraries and the standard-library modules the reader imports,
  the reader's side of docteur_core, and initramfs/init and
  initramfs/guest_run.py. It is cached under a hash of all of those, so a
  second run only hashes files.
- Cache: $DOCTEUR_CACHE, else $XDG_CACHE_HOME/docteur, else ~/.cache/docteur
  (a kernel of about 100 MB unpacked and a few initramfs of about 40 MB).

Standard library only; runs on the host.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable

# The files that run inside the guest, and the root that holds docteur_core
# (a clone, or site-packages): the guest is built from the package itself.
HERE = Path(__file__).resolve().parent / "initramfs"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Debian's own interpreter (nbdkit's Python plugin needs it anyway), not a
# virtual environment's: its standard library is where Debian put it.
GUEST_PYTHON = Path(os.path.realpath("/usr/bin/python3"))
BUSYBOX = Path("/bin/busybox")
META_PACKAGE = "linux-image-amd64"
# What a virtio-blk disk on QEMU's PCI bus needs, and the virtio network
# card of `docteur boot --http`; dependencies are added.
WANTED_MODULES = ["virtio_pci", "virtio_blk", "virtio_net"]
# Where the network modules are in the kernel package (fetched into a
# kernel cached before they were wanted: `_add_net_modules`).
NET_MODULE_PATTERNS = ["./lib/modules/*/kernel/drivers/net/virtio_net.ko*",
                       "./lib/modules/*/kernel/drivers/net/net_failover.ko*",
                       "./lib/modules/*/kernel/net/core/failover.ko*"]
BUSYBOX_APPLETS = ["sh", "mount", "mkdir", "insmod", "poweroff", "usleep", "sleep",
                   "dmesg", "cat", "ls", "echo", "ip"]
KEEP_INITRDS = 4

Log = Callable[[str], None]


class GuestBuildError(Exception):
    """The guest could not be built (no kernel package, missing tool...)."""


@dataclass(frozen=True)
class Kernel:
    version: str        # e.g. 6.1.0-56-amd64
    package: str        # e.g. linux-image-6.1.0-56-amd64_6.1.192-2
    root: Path          # the unpacked tree (boot/, lib/modules/...)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "boot" / f"vmlinux-{self.version}"

    @property
    def image(self) -> Path:
        """What QEMU boots: the uncompressed kernel when there is one (see
        `extract_vmlinux`), else the compressed one."""
        return self.vmlinux if self.vmlinux.exists() else self.vmlinuz

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    kernel_version: str
    built: bool          # False when the initramfs came from the cache
    seconds: float       # time spent preparing


def default_cache() -> Path:
    """$DOCTEUR_CACHE, else the XDG cache folder: never inside the package,
    which may be read-only (site-packages)."""
    if os.environ.get("DOCTEUR_CACHE"):
        return Path(os.environ["DOCTEUR_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "docteur"


def _quiet(_: str) -> None:
    pass


def _run(cmd: list[str], *, cwd: Path | None = None, check: bool = False,
         stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(cmd, capture_output=True, cwd=cwd, check=check, stdin=stdin)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{cmd[0]} not found: install it (see the README's Install)") from exc


# --- kernel ---------------------------------------------------------------

def _apt_download(package: str, folder: Path, log: Log) -> Path:
    """`apt-get download PACKAGE` into folder; update the lists once if needed."""
    for attempt in (1, 2):
        done = _run(["apt-get", "download", package], cwd=folder)
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if done.returncode == 0 and debs:
            return debs[-1]
        if attempt == 1:
            log(f"apt-get download {package} failed; running apt-get update")
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            update = _run(sudo + ["apt-get", "update", "-qq"])
            if update.returncode != 0:
                raise GuestBuildError("apt-get update failed: "
                                      + update.stderr.decode(errors="replace").strip())
    raise GuestBuildError(f"apt-get download {package} failed: "
                          + done.stderr.decode(errors="replace").strip())


def _versioned_kernel_package(meta_deb: Path) -> str:
    depends = _run(["dpkg-deb", "-f", str(meta_deb), "Depends"], check=False)
    for alternative in re.split(r"[,|]", depends.stdout.decode()):
        name = alternative.strip().split(" ")[0]
        if re.fullmatch(r"linux-image-[0-9].*-amd64", name):
            return name
    raise GuestBuildError(f"{META_PACKAGE} names no versioned kernel: {depends.stdout!r}")


def ensure_kernel(cache: Path, log: Log = _quiet, refresh: bool = False) -> Kernel:
    """The unpacked kernel in the cache, fetched on first use (or on refresh)."""
    selected = cache / "kernel" / "selected"
    if selected.exists() and not refresh:
        root = cache / "kernel" / selected.read_text().strip()
        kernel = _kernel_at(root)
        if kernel:
            extract_vmlinux(kernel, log)
            _add_net_modules(kernel, cache, log)
            return kernel
    (cache / "kernel").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "kernel", prefix="fetch-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)  # lets apt's sandbox user write there
        log(f"resolving {META_PACKAGE}")
        meta = _apt_download(META_PACKAGE, tmp_path, log)
        package = _versioned_kernel_package(meta)
        log(f"downloading {package}")
        deb = _apt_download(package, tmp_path, log)
        name = deb.name[:-len("_amd64.deb")]
        log(f"unpacking the kernel and the virtio modules of {deb.name}")
        unpacked = tmp_path / "root"
        unpacked.mkdir()
        tar_input = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                     stdout=subprocess.PIPE)
        tar = _run(["tar", "-x", "-C", str(unpacked), "--wildcards",
                    "./boot/vmlinuz-*", "./lib/modules/*/modules.builtin",
                    "./lib/modules/*/kernel/drivers/virtio/*",
                    "./lib/modules/*/kernel/drivers/block/virtio_blk.ko*",
                    *NET_MODULE_PATTERNS],
                   stdin=tar_input.stdout)
        if tar_input.stdout is not None:  # (stdout=PIPE: it is)
            tar_input.stdout.close()
        if tar_input.wait() != 0 or tar.returncode != 0:
            raise GuestBuildError(f"could not unpack {deb.name}: "
                                  + tar.stderr.decode(errors="replace").strip())
        target = cache / "kernel" / name
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    kernel = _kernel_at(target)
    if not kernel:
        raise GuestBuildError(f"{deb.name} holds no kernel image")
    extract_vmlinux(kernel, log)
    _add_net_modules(kernel, cache, log)
    tmp_selected = selected.with_suffix(".tmp")
    tmp_selected.write_text(name + "\n")
    tmp_selected.replace(selected)
    return kernel


def _has_net_modules(kernel: Kernel) -> bool:
    return any(kernel.modules.glob("kernel/drivers/net/virtio_net.ko*"))


def _add_net_modules(kernel: Kernel, cache: Path, log: Log = _quiet) -> None:
    """Add the network modules to a kernel cached before they were wanted:
    its package fetched again, only those files unpacked next to the
    others (nothing a running boot uses is replaced)."""
    if _has_net_modules(kernel):
        return
    with tempfile.TemporaryDirectory(dir=cache / "kernel", prefix="fetch-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        log(f"fetching the network modules of {kernel.package}")
        deb = _apt_download(kernel.package.rsplit("_", 1)[0], tmp_path, log)
        unpacked = tmp_path / "root"
        unpacked.mkdir()
        tar_input = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                     stdout=subprocess.PIPE)
        tar = _run(["tar", "-x", "-C", str(unpacked), "--wildcards", *NET_MODULE_PATTERNS],
                   stdin=tar_input.stdout)
        if tar_input.stdout is not None:  # (stdout=PIPE: it is)
            tar_input.stdout.close()
        if tar_input.wait() != 0 or tar.returncode != 0:
            raise GuestBuildError(f"could not unpack the network modules of {deb.name}: "
                                  + tar.stderr.decode(errors="replace").strip())
        for found in sorted(unpacked.rglob("*.ko*")):
            target = kernel.root / found.relative_to(unpacked)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".tmp")
            shutil.copyfile(found, partial)
            partial.replace(target)
    if not _has_net_modules(kernel):
        raise GuestBuildError(f"{kernel.package} holds no virtio_net module")


def _kernel_at(root: Path) -> Kernel | None:
    found = sorted((root / "boot").glob("vmlinuz-*")) if root.is_dir() else []
    if not found:
        return None
    return Kernel(found[-1].name[len("vmlinuz-"):], root.name, root)


def has_pvh_note(elf: bytes) -> bool:
    """Whether an x86-64 ELF kernel has the Xen PVH entry note QEMU boots it by."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        position, end = p_offset, p_offset + p_filesz
        while position + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, position)
            name = elf[position + 12:position + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(kernel: Kernel, log: Log = _quiet) -> bool:
    """Unpack the ELF kernel from Debian's XZ-compressed bzImage.

    Under TCG the kernel's own XZ decompression takes most of the boot
    (about 7 of 15 s here); QEMU boots an uncompressed ELF kernel that has
    a PVH entry note (CONFIG_PVH) directly. When that is not possible the
    compressed kernel is booted as it is.
    """
    if kernel.vmlinux.exists():
        return True
    data = kernel.vmlinuz.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    except lzma.LZMAError:
        return False
    if not has_pvh_note(elf):
        log("the kernel has no PVH entry: booting the compressed kernel")
        return False
    partial = kernel.vmlinux.with_suffix(".tmp")
    partial.write_bytes(elf)
    partial.replace(kernel.vmlinux)
    return True


# --- modules --------------------------------------------------------------

def _modinfo(path: Path) -> dict[str, str]:
    """The .modinfo key=value strings of a kernel module (uncompressed .ko)."""
    data = path.read_bytes()
    info: dict[str, str] = {}
    for match in re.finditer(rb"(?<=\0)(name|depends)=([^\0]*)\0", data):
        info.setdefault(match.group(1).decode(), match.group(2).decode())
    return info


def module_load_order(kernel: Kernel, wanted: Iterable[str] = WANTED_MODULES) -> list[Path]:
    """The .ko files to insmod, dependencies first, built-in ones left out."""
    builtin_file = kernel.modules / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        for line in builtin_file.read_text().split():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    files = {p.name.split(".ko")[0].replace("-", "_"): p
             for p in kernel.modules.rglob("*.ko")}
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in builtin or files.get(name) in order:
            return
        if name not in files:
            raise GuestBuildError(f"kernel {kernel.version} has no module {name}")
        if name in visiting:
            raise GuestBuildError(f"module dependency cycle at {name}")
        visiting.add(name)
        for dep in filter(None, _modinfo(files[name]).get("depends", "").split(",")):
            visit(dep.replace("-", "_"))
        visiting.discard(name)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


# --- shared libraries -----------------------------------------------------

def shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every library (and the loader) the binaries load, as `ldd` names them."""
    found: set[Path] = set()
    for binary in binaries:
        done = _run(["ldd", str(binary)])
        for line in done.stdout.decode().splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(Path(match.group(1)))
    return found


# --- cpio (newc) ----------------------------------------------------------

class Cpio:
    """A tiny newc writer: what the kernel unpacks, built without root."""

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.out = out
        self.ino = 1
        self.dirs: set[str] = {""}

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        name = name.strip("/")
        if name in self.dirs:
            return
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFDIR | 0o755)
        self.dirs.add(name)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def tree(self, root: Path, prefix: str = "") -> None:
        for path in sorted(root.rglob("*")):
            name = prefix + "/" + str(path.relative_to(root))
            if path.is_symlink():
                self.symlink(name, os.readlink(path))
            elif path.is_dir():
                self.directory(name)
            else:
                self.file(name, path.read_bytes(), stat.S_IMODE(path.stat().st_mode))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


# --- initramfs ------------------------------------------------------------

def _package_sources() -> list[Path]:
    return sorted((PACKAGE_ROOT / "docteur_core").rglob("*.py"))


def initramfs_key(kernel: Kernel) -> str:
    """A hash of everything that goes into the initramfs."""
    digest = hashlib.sha256()
    digest.update(f"kernel {kernel.package} {kernel.version}\n".encode())
    for binary in (GUEST_PYTHON, BUSYBOX):
        st = binary.stat()
        digest.update(f"{binary} {st.st_size} {st.st_mtime_ns}\n".encode())
    for path in [HERE / "init", HERE / "guest_run.py", HERE / "stage_python.py",
                 Path(__file__).resolve(), *_package_sources()]:
        digest.update(f"{path.relative_to(PACKAGE_ROOT)}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def build_initramfs(kernel: Kernel, output: Path, log: Log = _quiet) -> None:
    for needed in (GUEST_PYTHON, BUSYBOX):
        if not needed.exists():
            raise GuestBuildError(f"{needed} is missing (Debian packages python3, "
                                  "busybox-static; see .ci/setup)")
    modules = module_load_order(kernel)
    log(f"building the initramfs: busybox, {GUEST_PYTHON.name}, "
        f"modules {' '.join(m.name for m in modules)}")
    with tempfile.TemporaryDirectory(prefix="docteur-stage-") as tmp:
        stage = Path(tmp)
        done = _run([str(GUEST_PYTHON), "-S", str(HERE / "stage_python.py"),
                     str(stage), str(PACKAGE_ROOT), str(HERE / "guest_run.py")])
        if done.returncode != 0:
            raise GuestBuildError("staging python failed: "
                                  + done.stderr.decode(errors="replace").strip())
        staged = json.loads(done.stdout)
        libraries = shared_libraries([GUEST_PYTHON, BUSYBOX]
                                     + [Path(p) for p in staged["extensions"]])
        partial = output.with_name(output.name + f".{os.getpid()}.tmp")
        try:
            _write_cpio(partial, kernel, modules, libraries, stage)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    log(f"initramfs: {staged['modules']} stdlib modules, {len(libraries)} libraries, "
        f"{output.stat().st_size / 1e6:.1f} MB")


def _write_cpio(path: Path, kernel: Kernel, modules: list[Path], libraries: set[Path],
                stage: Path) -> None:
    """The initramfs: a newc cpio, uncompressed, so that the guest's kernel
    (slow under TCG) has nothing to decompress."""
    with open(path, "wb") as f:
        cpio = Cpio(f)
        for folder in ("dev", "proc", "sys", "tmp", "bin", "lib/modules"):
            cpio.directory(folder)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3)
        cpio.file("init", (HERE / "init").read_bytes(), 0o755)
        cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in BUSYBOX_APPLETS:
            cpio.symlink(f"bin/{applet}", "busybox")
        for module in modules:
            cpio.file(f"lib/modules/{module.name}", module.read_bytes())
        cpio.file("lib/modules/load-order",
                  "".join(m.name[:-len(".ko")] + "\n" for m in modules).encode())
        cpio.file(str(GUEST_PYTHON), GUEST_PYTHON.read_bytes(), 0o755)
        cpio.symlink("usr/bin/python3", GUEST_PYTHON.name)
        for library in sorted(libraries):
            cpio.file(str(library), library.resolve().read_bytes(), 0o755)
        cpio.tree(stage)
        cpio.close()


def prepare_guest(cache: Path | None = None, log: Log = _quiet,
                  refresh_kernel: bool = False) -> Guest:
    """Kernel and initramfs, from the cache when they are up to date."""
    started = time.monotonic()
    cache = Path(cache) if cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once would race
        kernel = ensure_kernel(cache, log, refresh_kernel)
        folder = cache / "initramfs"
        folder.mkdir(exist_ok=True)
        initrd = folder / f"{kernel.version}-{initramfs_key(kernel)}.cpio"
        built = not initrd.exists()
        if built:
            build_initramfs(kernel, initrd, log)
            old = sorted(folder.glob("*.cpio"), key=lambda p: p.stat().st_mtime)
            for stale in old[:-KEEP_INITRDS]:
                stale.unlink(missing_ok=True)
    return Guest(kernel.image, initrd, kernel.version, built, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder (default: $DOCTEUR_CACHE, else $XDG_CACHE_HOME/docteur, "
                             "else ~/.cache/docteur)")
    parser.add_argument("--refresh-kernel", action="store_true",
                        help="ask apt for the current kernel even if one is cached")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        guest = prepare_guest(args.cache, lambda m: print(m, file=sys.stderr),
                              args.refresh_kernel)
    except GuestBuildError as exc:
        print(f"guest_image: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"kernel": str(guest.kernel), "initrd": str(guest.initrd),
                          "kernel_version": guest.kernel_version, "built": guest.built,
                          "seconds": round(guest.seconds, 2)}))
    else:
        how = f"built in {guest.seconds:.1f} s" if guest.built else "from the cache"
        print(f"kernel:    {guest.kernel} ({guest.kernel_version})")
        print(f"initramfs: {guest.initrd} ({guest.initrd.stat().st_size / 1e6:.1f} MB, {how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
