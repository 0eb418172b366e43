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
by every verb. Ctrl-C exits with 130, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from . import __version__
from .errors import DocteurError

# Verb modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "docteur_core.build.command",
    "docteur_core.reader.commands",
    "docteur_core.reader.extract",
    "docteur_core.reader.diffcommand",
    "docteur_core.verify.command",
    "docteur_core.serve.command",
    "docteur_core.mount.command",
    "docteur_core.boot.command",
    "docteur_core.demo.command",
]


def _load_commands() -> dict[str, tuple[Callable, Callable]]:
    commands: dict[str, tuple[Callable, Callable]] = {}
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet: that verb is absent
                continue
            raise
        commands.update(module.COMMANDS)
    return commands


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(
        prog="docteur",
        description="Turn a directory or a Git repository into a compact, read-only, "
        "verifiable disk image; read files out of it; serve it to guests over NBD.",
    )
    parser.add_argument("--version", action="version", version=f"docteur {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    runners: dict[str, Callable] = {}
    for verb, (add_arguments, run) in _load_commands().items():
        doc = (add_arguments.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else None
        p = sub.add_parser(
            verb, help=summary, description=doc or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(p)
        runners[verb] = run
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    run = runners[args.verb]
    try:
        return run(args) or 0
    except DocteurError as exc:
        print(f"docteur {args.verb}: {exc}", file=sys.stderr)
        # 1, or the verb's own status for trouble (diff: 2, as diff(1),
        # since its 1 means "different").
        return getattr(run, "error_status", 1)
    except KeyboardInterrupt:
        print(f"docteur {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
