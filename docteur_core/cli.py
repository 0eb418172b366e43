"""The `docteur` command: one subcommand per verb, each owned by a module.

A command module exposes `COMMANDS`, a dict from verb to a pair
`(add_arguments(parser), run(args) -> int)`, plus a one-line help in the
`add_arguments` function's docstring. Modules must keep their heavy imports
(dulwich, asyncio clients) inside `run`, so that `docteur --help` stays fast.

Every user error is a `DocteurError`: it is printed as one line on stderr
and the exit status is 1 (or the verb's `run.error_status`: `diff` uses 2,
as diff(1) does). A usage mistake, a bad option value included, is
argparse's: the verb's usage line, exit status 2; option values are checked
by the shared `options.py` types so each kind is refused in the same words
by every verb. An unknown option is the verb's usage error too, with the
closest known option suggested (`verbparser.py`). Any `OSError` a verb lets
through (a full disk, a folder it may not write) is one line naming the
path, or standard output, and its reason, exit status 1; a closed pipe on
standard output is silent. Ctrl-C exits with 130, without a traceback.

`docteur --version` imports nothing but this module: not argparse, not a verb.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__
from .errors import DocteurError, UsageError

if TYPE_CHECKING:
    import argparse

    _Adder = Callable[[argparse.ArgumentParser], None]  # a verb's add_arguments
    _Runner = Callable[[argparse.Namespace], int]  # and its run

# Verb modules and the verbs each defines, in the order `--help` lists them.
# The verbs are written here as well as in each module's COMMANDS so that
# `docteur cat` imports only the reader's module, not the builder, the
# boot code and the verifier (a tenth of a second of imports on every
# call); tests/cli/test_lazy_imports.py keeps the two in step.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "docteur_core.make.command": ("make",),
    "docteur_core.files.command": ("ls", "cat", "stat", "tree", "info"),
    "docteur_core.files.extract": ("extract",),
    "docteur_core.diff.command": ("diff",),
    "docteur_core.verify.command": ("verify",),
    "docteur_core.serve.command": ("serve", "plugin-path"),
    "docteur_core.mount.command": ("mount", "umount"),
    "docteur_core.web.command": ("http",),
    "docteur_core.boot.command": ("boot",),
    "docteur_core.demo.command": ("demo",),
}


def _load_commands(verb: str | None = None) -> dict[str, tuple[_Adder, _Runner]]:
    """Every verb's (add_arguments, run), or only those of the module that
    defines `verb` when it is known."""
    import importlib

    names = [m for m, verbs in COMMAND_MODULES.items() if verb in verbs] or list(COMMAND_MODULES)
    commands: dict[str, tuple[_Adder, _Runner]] = {}
    for name in names:
        commands.update(importlib.import_module(name).COMMANDS)
    return commands


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb `argv` names, if its first word is one (options before the
    verb, such as --version or --help, mean the whole parser)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def build_parser(verb: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, _Runner]]:
    import argparse

    from .verbparser import VerbParser

    parser = argparse.ArgumentParser(
        prog="docteur",
        description="Turn a directory or a Git repository into a compact, read-only, "
        "verifiable disk image; read files out of it; serve it to guests over NBD.",
    )
    parser.add_argument("--version", action="version", version=f"docteur {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=VerbParser)
    sub.required = True
    runners: dict[str, _Runner] = {}
    for name, (add_arguments, run) in _load_commands(verb).items():
        doc = (add_arguments.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else None
        p = sub.add_parser(
            name, help=summary, description=doc or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(p)
        runners[name] = run
    return parser, runners


# Errors of a write that found no room: with no file named, the write was
# to a descriptor docteur was handed, standard output (every file docteur
# writes is opened by name, and its errors name it).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _stdout_broken() -> bool:
    """Whether standard output refuses its pending bytes (a full device)."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    except ValueError:  # closed
        return False
    return False


def _where(exc: OSError) -> str | None:
    """The path an OSError is about, "standard output", or None if unknown."""
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return where
    if exc.errno in _FULL or _stdout_broken():
        return "standard output"
    return None


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that the bytes still buffered
    do not fail again at exit ("Exception ignored ..." and status 120)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a closed stream
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _os_error(verb: str, exc: OSError, status: int = 1) -> int:
    """One line for an OSError no verb turned into a DocteurError; `status`."""
    where = _where(exc)
    reason = exc.strerror or str(exc) or type(exc).__name__
    print(f"docteur {verb}: " + (f"{where}: " if where else "") + reason, file=sys.stderr)
    if where == "standard output":
        _silence_stdout()
    return status


def _version() -> int:
    """`docteur --version`, before any parser or verb is imported."""
    try:
        print(f"docteur {__version__}", flush=True)
    except OSError as exc:
        return _os_error("--version", exc)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if list(argv[:1]) == ["--version"]:
        return _version()
    parser, runners = build_parser(_verb_of(argv))
    args = parser.parse_args(argv)
    run = runners[args.verb]
    try:
        status = run(args) or 0
        sys.stdout.flush()  # a full device says so only when the last bytes go out
        return status
    except UsageError as exc:
        print(f"docteur {args.verb}: {exc}", file=sys.stderr)
        return 2
    except DocteurError as exc:
        print(f"docteur {args.verb}: {exc}", file=sys.stderr)
        # 1, or the verb's own status for trouble (diff: 2, as diff(1),
        # since its 1 means "different").
        return getattr(run, "error_status", 1)
    except KeyboardInterrupt:
        print(f"docteur {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `docteur ls -r IMG | head`: the reader left, say nothing
        _silence_stdout()
        return 1
    except OSError as exc:
        return _os_error(args.verb, exc, getattr(run, "error_status", 1))


if __name__ == "__main__":
    sys.exit(main())
