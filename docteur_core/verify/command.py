"""`docteur verify IMAGE`: which snapshot an image holds, and proof it is intact.

The output is the OCaml original's, byte for byte, so that scripts reading it
keep working: `commit`, `author` (name quoted the way OCaml's `%S` quotes it)
and `root`, each with a tab before the colon, then a blank line and the
commit message as stored. Like the original, it is printed only when the
image is intact; otherwise every problem goes to stderr, one line each
(region: what, where), and the exit status is 1. One departure: a message
over MAX_SHOWN_MESSAGE characters is cut there, as `docteur info` cuts it,
and a line says so (`message_complete: false` in `--json`): a hostile
commit may hold gigabytes of message, which verify hashes but never holds.
A signed commit adds one line after `root`, `signature\t: STATE (...)` (an
unsigned one none, so the OCaml output stays as it was); `--json` always
has a `signature` field.

`--commit ID` (or an http(s) URL ending in ID.img) and `--allowed-signers
FILE` say which image is wanted: another is one line, `wrong image: ...`,
exit 1 (`verify.trust`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import options
from ..errors import DocteurError, WrongCommit
from .report import R_IMAGE

if TYPE_CHECKING:
    from ..blockdev.block import BlockDevice
    from .report import Report

# How the verifier's report starts when the file is no image (format/layout.py's rule).
NOT_AN_IMAGE = f"{R_IMAGE}: not a docteur image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Check an image completely and print the commit it holds.

    Checks the header and the padding, every PACK entry (header, zlib stream,
    delta base and result), the pack checksum, the IDX (fanout, sorted ids,
    offsets, CRC-32s, checksums) against the pack, every object's SHA-1 (the
    Merkle check), and that everything the commit's tree reaches is present.
    Exits 0 only when all of it holds; otherwise prints one line per problem
    on stderr and exits 1. -q prints nothing for an intact image, as the
    OCaml docteur.verify -q. IMAGE is a file, a block device, an NBD URI
    (nbd://host:port/export, nbd+unix:///export?socket=PATH) or an http(s)
    URL (fetched once by range requests: what the check reads twice is kept
    in a temporary file in $TMPDIR, up to the image's size).

    Which image: --commit ID refuses any image whose header names another
    commit, before anything else is read (one line, `wrong image: ...`, exit
    1); an http(s) URL whose last segment is ID.img pins ID the same way
    unless --commit is given. --allowed-signers FILE (git's
    gpg.ssh.allowedSignersFile format) accepts only a commit signed by one
    of FILE's keys (as `git verify-commit` judges it, with ssh-keygen -Y
    verify): unsigned, signed by another key, or a signature that does not
    hold is `wrong image: ...`, exit 1.

    The commit's signature is reported (a `signature` line after `root` for a
    signed commit, and in --json): good (who FILE says signed it, and the
    key), bad (it does not hold for this commit), unknown (signed, not
    checked: no --allowed-signers, a key FILE does not list, or an OpenPGP
    signature), or none. Repository commits keep their own signatures.
    """
    parser.add_argument("image", metavar="IMAGE", help="image file, device, NBD URI or http(s):// URL")
    parser.add_argument("--quick", action="store_true",
                        help="check only the header, signatures, counts, padding and "
                             "checksums (reads every byte once, no per-object work)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON report (fields, counts, checks, problems)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing for an intact image (no commit lines, no status "
                             "line): the exit status says it, as the OCaml docteur.verify -q; "
                             "problems are still printed, and --json still prints its report")
    options.add_pin_arguments(parser)
    options.add_limit_arguments(parser, ("max_object_size", "max_paths"))


def json_safe(value: object) -> object:
    """`value` with every string valid UTF-8: a name's bytes that are not
    (kept as surrogates by `decode_name`) become `\\xNN` escapes, as Python
    shows them, so the report is valid JSON whatever the tree names hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_OCAML_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r",
                  0x08: "\\b"}


def ocaml_quoted(text: str) -> str:
    """`text` as OCaml's `Printf "%S"` prints it (String.escaped, in quotes)."""
    out = ['"']
    for b in text.encode("utf-8", "surrogateescape"):
        if b in _OCAML_ESCAPES:
            out.append(_OCAML_ESCAPES[b])
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")  # decimal, as OCaml writes it
    out.append('"')
    return "".join(out)


def render(report: Report) -> str:
    """The text the OCaml `docteur.verify` prints for an intact image."""
    lines = [f"commit\t: {report.commit}"]
    if report.author is not None:
        lines.append(f"author\t: {ocaml_quoted(report.author.name)} <{report.author.email}>")
    lines.append(f"root\t: {report.tree}")
    if report.signature is not None and report.signature.state != "none":
        lines.append(f"signature\t: {report.signature.text()}")
    text = "\n".join(lines) + "\n"
    if report.message:
        text += "\n" + report.message + "\n"
    else:
        text += "\n"
    if not report.message_complete:
        from ..reader.commands import MAX_SHOWN_MESSAGE

        text += (f"[... cut after {MAX_SHOWN_MESSAGE} characters: the commit object is "
                 f"{report.commit_size} bytes]\n")
    return text


class _Counting:
    """The device, counting the bytes the checks read, for the status line.

    Progress is measured where every check's work shows, at the block
    interface, so the checks themselves need no hooks. The count is of bytes
    read, not a position: a delta base rebuilt from the device counts again,
    so it may pass the image's size and is shown without a percentage.
    """

    def __init__(self, device: BlockDevice, progress: Callable[[str], None]) -> None:
        from ..progress import Throttle

        self.device = device
        self.block_size = device.block_size
        self.capacity = device.capacity
        self.done = 0
        self.show = Throttle(progress)

    def read(self, offset: int, length: int) -> bytes:
        data = self.device.read(offset, length)
        self.done += len(data)
        self.show(f"Verifying: {self.done / 1e6:.1f} MB read, image {self.capacity / 1e6:.1f} MB")
        return data

    def close(self) -> None:
        self.device.close()


def run(args: argparse.Namespace) -> int:
    from ..blockdev.device import open_device
    from ..blockdev.http_range import is_http_url
    from . import verify_image

    from ..progress import for_stderr

    from ..format.pin import pin_of_url

    commit = args.commit if args.commit is not None else pin_of_url(args.image)
    if args.allowed_signers is not None:
        from ..sign import readable_signers
        readable_signers(args.allowed_signers)  # a typo costs one line, not a whole check
    if not args.quick and is_http_url(args.image):
        # Over HTTP the full check's two passes over the pack (the plan of
        # delta bases, then the scan) would fetch it twice: each byte once.
        from ..blockdev.block import SectorCache
        from ..blockdev.device import open_raw_device
        from ..blockdev.spool import SpooledDevice

        device = SectorCache(SpooledDevice(open_raw_device(args.image, pinned=commit is not None)))
    else:
        device = open_device(args.image, pinned=commit is not None)
    progress = for_stderr(sys.stderr, quiet=args.quiet)
    try:
        checked: BlockDevice = device
        if progress is not None:
            checked = _Counting(device, progress)
        report = verify_image(checked, quick=args.quick, max_object_size=args.max_object_size,
                              max_paths=args.max_paths, commit=commit,
                              allowed_signers=args.allowed_signers)
    except WrongCommit as exc:
        refused = getattr(exc, "report", None)
        if args.json and refused is not None:
            json.dump(json_safe(refused.to_json()), sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        if commit is not None and args.commit is None and refused is None:
            raise WrongCommit(f"{exc.what} (by the URL's name, {commit}.img; --commit ID "
                              "pins another)") from None
        raise
    finally:
        if progress is not None:
            progress.close()
        device.close()
    out = sys.stdout
    if args.json:
        json.dump(json_safe(report.to_json()), out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif report.ok and not args.quiet:
        out.write(render(report))
    out.flush()
    for line in report.warning_lines():
        print(f"warning: {line}", file=sys.stderr)
    if report.ok:
        return 0
    lines = report.problem_lines()
    if len(lines) == 1 and lines[0].startswith(NOT_AN_IMAGE):
        # Not damage: another kind of file. One line naming it, as every
        # command says it (the JSON report above still holds the problem).
        raise DocteurError(f"{args.image}: {lines[0][len(R_IMAGE) + 2:]}")
    for line in lines:
        print(line, file=sys.stderr)
    n = len(report.problems) + sum(report.suppressed.values())
    raise DocteurError(f"{args.image} is damaged: {n} problem{'s' if n != 1 else ''} found")


COMMANDS = {"verify": (add_arguments, run)}
