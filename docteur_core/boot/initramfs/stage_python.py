"""Copy the part of Python the guest needs into a staging tree.

Run by docteur_core/boot/guest_image.py with the interpreter the guest will
run (Debian's /usr/bin/python3.11), because only that interpreter knows
which of its modules are frozen, built in, or files:

    /usr/bin/python3.11 -S stage_python.py DEST PACKAGE_ROOT GUEST_RUN

It finds every standard-library module that `docteur_core`'s reader-side
modules (and guest_run.py) import, statically with `modulefinder`, so
that imports made only on error paths are there too. It copies them to
DEST/usr/lib/python3.11, copies docteur_core to DEST/docteur, and compiles
everything to unchecked-hash .pyc files: the guest has no time to compile
and its files' dates mean nothing. Only the reader's side of docteur_core goes
in (GUEST_PARTS): the guest never builds, verifies, serves or boots. It prints, as JSON, the extension
modules copied (the caller adds their shared libraries).
"""

from __future__ import annotations

import importlib.util
import json
import modulefinder
import os
import py_compile
import shutil
import sys
import sysconfig
import tempfile

# Never wanted in the guest: GUI, tests, packaging, and extensions that
# would drag in OpenSSL (the standard library copes with their absence).
EXCLUDES = [
    "tkinter", "_tkinter", "test", "idlelib", "ensurepip", "lib2to3", "pydoc_data",
    "distutils", "unittest", "pydoc", "_ssl", "_hashlib", "readline", "_curses",
    "docteur_core.make", "dulwich",
]
# Needed at start-up or by the runner, whatever the finder sees.
ALWAYS = ["encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1",
          "encodings.ascii", "os", "runpy"]
# The parts of docteur_core the guest runs: the package's own __init__ and
# errors, the format, block-device and reader subpackages, and the web
# server but its host command (`docteur http`'s argparse and trust checks).
GUEST_PARTS = ("__init__.py", "errors.py", "format", "blockdev", "reader",
               "web/__init__.py", "web/request.py", "web/ranges.py", "web/site.py",
               "web/server.py", "web/start.py", "web/guest.py")


def guest_sources(package_root: str) -> list[tuple[str, str]]:
    """(path relative to package_root, dotted module name) of every guest module."""
    found = []
    for part in GUEST_PARTS:
        top = os.path.join(package_root, "docteur_core", part)
        files = [top] if part.endswith(".py") else [
            os.path.join(top, name) for name in sorted(os.listdir(top)) if name.endswith(".py")]
        for path in files:
            relative = os.path.relpath(path, package_root)
            dotted = relative[:-3].replace(os.sep, ".")
            found.append((relative, dotted[:-len(".__init__")] if dotted.endswith(".__init__")
                          else dotted))
    return found


def compile_to(source: str, dest: str, shown_as: str) -> None:
    shutil.copyfile(source, dest)
    py_compile.compile(
        dest, cfile=importlib.util.cache_from_source(dest), dfile=shown_as, doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def main(dest: str, package_root: str, guest_run: str) -> int:
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = os.path.join(stdlib, "lib-dynload")
    sources = guest_sources(package_root)
    # docteur_core is found through a folder holding it alone: an import of
    # an excluded part (`from .build import ...` on a path the guest never
    # takes) is then retried as the top-level name, and anything else in
    # PACKAGE_ROOT answering to it (the `build/` that `pip wheel .` leaves in
    # a clone, a namespace package) made modulefinder crash.
    with tempfile.TemporaryDirectory(prefix="docteur-stage-") as alone:
        os.symlink(os.path.join(package_root, "docteur_core"),
                   os.path.join(alone, "docteur_core"))
        finder = modulefinder.ModuleFinder(
            path=[alone] + [p for p in sys.path if p and p != package_root],
            excludes=EXCLUDES)
        for name in ALWAYS + [dotted for _, dotted in sources]:
            finder.import_hook(name)
        finder.run_script(guest_run)

    extensions = []
    copied = 0
    for name, module in sorted(finder.modules.items()):
        # typeshed's modulefinder.Module declares no attributes; its
        # __init__ sets __file__ (None for a built-in module).
        path: str | None = module.__file__  # type: ignore[attr-defined]
        if not path or not path.startswith(stdlib + os.sep):
            continue
        target = os.path.join(dest, path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path.startswith(dynload + os.sep):
            shutil.copyfile(path, target)
            extensions.append(path)
        elif path.endswith(".py"):
            compile_to(path, target, path)
        copied += 1
    # `sys.prefix` is found from this landmark; the folder must exist too.
    os.makedirs(os.path.join(dest, dynload.lstrip("/")), exist_ok=True)

    for relative, _ in sources:
        target = os.path.join(dest, "docteur", relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compile_to(os.path.join(package_root, relative), target, relative)
    shutil.copyfile(guest_run, os.path.join(dest, "docteur", "guest_run.py"))
    json.dump({"extensions": extensions, "modules": copied,
               "missing": sorted(n for n in finder.badmodules
                                 if n.split(".")[0] not in ("docteur_core",))},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
