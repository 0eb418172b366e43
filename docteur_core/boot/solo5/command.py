"""`docteur boot --solo5 spt|hvt|auto IMAGE cat|sha256 PATH [';' ...]`.

Lives here rather than in boot/command.py, which only hands over to it:
the Solo5 guest has its own verbs (cat, sha256), no reader modes and one
guest run per command. An image file is served with the project's nbdkit
plugin and attached with nbdfuse (the whole chain, as `docteur boot` serves
it to QEMU); `--server file` uses nbdkit's file plugin, `--no-server` gives
the file to the tender directly; an NBD URI goes through nbdfuse.

Trust: the guest checks every object it reads against its git id, back to
a commit (`--no-verify` stops that). The commit is `--commit ID` if given;
else, for a local image file, the one its header names, read here before
any server starts and passed to the guest as a pin, so that a server or
device that gives the guest other bytes (another image, even a valid one)
is caught; for an NBD URI, the guest checks against the header it reads.
"""

from __future__ import annotations

import argparse
import sys

from ..runner import BootError, shown, split_commands
from .runner import VERBS, image_commit, is_uri, run_many
from .toolchain import Progress


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options `docteur boot` gains (called from its _add_options)."""
    parser.add_argument("--solo5", choices=("spt", "hvt", "auto"), default=None,
                        help="run the Solo5 unikernel instead of QEMU, on solo5-spt, "
                             "solo5-hvt (KVM) or auto (hvt if it works); verbs: cat PATH, "
                             "sha256 PATH; built on first use (docteur_core/boot/solo5)")
    parser.add_argument("--no-server", action="store_true",
                        help="with --solo5: attach the image file to the tender directly "
                             "(default: serve it with nbdkit and attach it with nbdfuse)")


def _commands(words: list[str]) -> list[tuple[str, str]]:
    commands = []
    for segment in split_commands(words):
        if len(segment) != 2 or segment[0] not in VERBS:
            raise BootError(f"{' '.join(segment)}: the Solo5 guest runs "
                            f"{' or '.join(v + ' PATH' for v in VERBS)}")
        commands.append((segment[0], segment[1]))
    return commands


def trust(args: argparse.Namespace, log: Progress) -> tuple[str | None, bool]:
    """(the commit the guest is pinned to or None, whether it verifies)."""
    commit, verify = getattr(args, "commit", None), getattr(args, "verify", True)
    if getattr(args, "allowed_signers", None):  # `docteur boot` checks it and pins
        raise BootError("--allowed-signers: the Solo5 guest cannot check a signature; "
                        "pin the commit with --commit ID")
    if commit is None and not is_uri(args.target):
        commit = image_commit(args.target)
        log(f"pinning commit {commit} (the header of {args.target}) for the guest")
    elif commit is None:
        log("no --commit: the guest checks the export against its own header's commit")
    if not verify:
        log("--no-verify: the guest does not check objects against their ids")
    return commit, verify


def run(args: argparse.Namespace, log: Progress) -> int:
    """Run each command in the unikernel; print as `docteur boot` does."""
    from ...reader.vocabulary import LIGHT

    if args.mode != LIGHT:
        raise BootError("the Solo5 guest reads in light mode only (drop --mode)")
    commands = _commands(args.command)
    commit, verify = trust(args, log)
    serve = None if args.no_server or is_uri(args.target) else args.server
    results = run_many(args.target, commands, args.solo5, args.timeout,
                       memory=args.memory, serve=serve, progress=log,
                       commit=commit, verify=verify)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for (verb, path), result in zip(commands, results):
        if len(commands) > 1:
            out.write(f"--- {verb} {path} (status {result.status})\n".encode())
        out.write(result.stdout if args.raw else shown(result.stdout))
        out.flush()
        err.write(result.stderr)
        err.flush()
    return next((r.status for r in results if r.status), 0)
