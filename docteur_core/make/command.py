"""The `docteur make` verb."""

from __future__ import annotations

import argparse
import sys
from types import FrameType
from typing import NoReturn, TextIO

from .. import options
from . import options as make_options
from ..errors import BuildError
from ..format.layout import DEFAULT_BLOCK_SIZE, block_size_rule
from ..progress import TerminalProgress as _TerminalProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Build an image from a directory, a Git repository or a remote URL.

SOURCE is a directory (path, file:///abs/path, or relativize://rel/path as the
OCaml docteur spells a path relative to the current folder), a local Git repository
(a work tree with .git, or a bare one: its committed objects are used, not
its working files), or a remote repository (https://, http:// with
credentials in the URL if needed, git://, ssh://, or git@host:path), which
is fetched at depth 1.

Over ssh, the ssh program is chosen as git does ($GIT_SSH_COMMAND, else
$GIT_SSH, else ssh) and runs with -o BatchMode=yes and no terminal: it never
asks for a password, a passphrase or whether to trust a host key. Use an
unencrypted key or ssh-agent, and a host already in known_hosts; otherwise
the build fails with one line (authentication refused, host key
verification failed).

A directory is hashed exactly as `git add` + `git write-tree` would (modes
100644/100755, symbolic links stored as links and never followed, hidden
files included); empty folders are kept as empty trees; a Git repository
nested in a subfolder is stored as its files, its .git skipped with a warning
(git would store a gitlink); sockets, FIFOs and devices are skipped with a
warning. Owner, group, other permission bits, setuid, mtimes, xattrs and hard
links are not kept (git's model): a file only its owner or group may read
(0600, 0640, 0700...) becomes readable by everyone, and one warning says how
many there are. It gets a synthetic commit whose date is --date, else
$SOURCE_DATE_EPOCH, else now.

The image holds one commit and everything reachable from its tree, packed
by `git pack-objects` (window 250, depth 50). Each pack-objects runs on
one thread (git's threaded search splits work by timing and is not
deterministic); every core is used by cutting the objects, before any
work, into parts fixed by the objects alone, each packed by its own
pack-objects, $DOCTEUR_JOBS at a time (default: the usable cores). So the
same source, options and date give a byte-identical image whatever the
core count.

With --compat ocaml the image is one the OCaml docteur reads completely in
both its modes (its fast reader and its list see 100644 files only, a
submodule makes its light reader fail, an empty email makes a commit
unreadable to it): files are stored as 100644, symbolic links as the
content of what they name inside SOURCE (a file, or a copy of a folder;
refused when the target leaves SOURCE or contains the link; a dangling link
is left out with a warning), submodules and empty emails are refused. A directory's commit is made as
the OCaml builder makes it: author and committer "Dr. Greenthumb
<noreply@cypress.hill>" (or --author), no message (or --message), dated
--date, else $SOURCE_DATE_EPOCH, else now with the local UTC offset. A
repository whose tree needs rewriting gets a new commit: its own with the
tree replaced (same parents, author, committer, dates and message; a
signature dropped). Without --compat ocaml, executables, links and
submodules are stored as git stores them, and the OCaml docteur's fast
reader will not see them: -v says how many in the summary line (not a
warning: it matters only to users of the OCaml readers).

IMAGE is written atomically: a failed or interrupted build leaves no
IMAGE, and an existing IMAGE untouched. An existing IMAGE that is not a
regular file (a device such as /dev/null, a FIFO, a socket, a folder, a
symbolic link) is refused. A file bigger than 4 GiB (the largest file
docteur stores; readers stream whole files) is refused before any work.
When IMAGE lies inside SOURCE, it and its temporary file are silently left
out (so `docteur make . site.img` twice gives the same image). A build
killed with SIGKILL takes its git and ssh processes with it; its temporary
files ($TMPDIR/docteur-make-PID-*, .IMAGE.docteur-PID-*.tmp) are removed by
the next build.

With --sign KEY, a directory's commit is signed as `git commit -S` signs
with gpg.format=ssh and user.signingKey=KEY: `ssh-keygen -Y sign -n git
-f KEY` over the commit, stored as its gpgsig header. KEY is a private key
file, or a public key file whose private half is in ssh-agent (an
encrypted key must be there: nothing asks for a passphrase). Readers
given --allowed-signers FILE (git's gpg.ssh.allowedSignersFile format)
then accept the image, and `git verify-commit` agrees. Ed25519 signatures
are deterministic, so a signed build stays reproducible; RSA and ECDSA
ones may not be (ECDSA's never are: then two builds differ in the
signature, hence in the commit id). The OCaml docteur reads and verifies
signed images as any other (it ignores the signature). A repository's
commit is stored as it is, with its own signature if it has one: --sign
with a repository source is a usage error.

With --gitignore, the directory's .gitignore files leave out what `git add`
(without --force) would leave out; --exclude adds patterns of your own.
The OCaml docteur.make's spellings are accepted as they mean the same here:
-b REF (--branch), -d DATE (--date), --bs N (--block-size), relativize://PATH;
its default branch differs (refs/heads/master there, HEAD here).

With --base OLD.img (a redeploy), the objects OLD already holds are
reused as stored (whole, or as deltas whose base is still in the image,
with their compressed bytes) and the delta search runs on the new objects
only: adding one release to ten takes a fraction of a full build, for an
image about as small. OLD is checked first (its IDX's and PACK's
checksums, every entry's CRC-32); a damaged one stops the build with one
line, nothing written. The new image is complete (it does not refer to
OLD), and OLD may be IMAGE itself. Its bytes depend on SOURCE, OLD and the
options: the same three give the same image; another base, another image
of the same tree. See docs/make.md.

A summary line ends every build on stderr (files and bytes in, image
bytes out and the ratio, objects and deltas, time), unless --quiet; the line
on stdout (image, size, objects, commit and tree ids) is printed even then.
On a terminal a status line shows progress, erased before any warning; with
stderr elsewhere, --compress max and zopfli print a line when the
re-encoding starts, one every 30 s at most, and one when it is done.
"""
    parser.add_argument("source", metavar="SOURCE", help="directory, repository or URL")
    parser.add_argument("image", metavar="IMAGE", help="image file to write")
    _commit_arguments(parser)
    _image_arguments(parser)
    _selection_arguments(parser)
    _signing_and_output_arguments(parser)


def _commit_arguments(parser: argparse.ArgumentParser) -> None:
    """Which commit: a repository's branch, or a directory's synthetic commit."""
    parser.add_argument("--branch", metavar="REF", type=make_options.branch,
                        help="branch or tag of a repository source (main, refs/heads/main, "
                             "v1.0); also -b REF, as the OCaml docteur.make spells it; "
                             "default: HEAD, the repository's own default branch (the "
                             "OCaml docteur.make's default is refs/heads/master: pass -b "
                             "refs/heads/master for its image of a repository whose HEAD is "
                             "another branch)")
    parser.add_argument("--date", metavar="RFC3339", type=make_options.date,
                        help="date of a directory's commit (also -d DATE, as the OCaml "
                             "docteur.make spells it), e.g. 2026-01-01T00:00:00Z or "
                             "2026-01-01T12:00:00+02:00 (its UTC offset is kept); a date-time "
                             "without a zone (2026-01-01T00:00:00) is read as UTC, a date "
                             "alone (2026-01-01) is midnight UTC")
    _ocaml_spellings(parser)
    parser.add_argument("--author", metavar="'NAME <EMAIL>'", type=make_options.author,
                        help="author and committer of a directory's commit "
                             "(default: docteur <docteur@localhost>)")
    parser.add_argument("--message", metavar="TEXT", help="message of a directory's commit")


def _image_arguments(parser: argparse.ArgumentParser) -> None:
    """How the image is laid out and compressed."""
    parser.add_argument("--block-size", metavar="N", type=options.block_size,
                        default=DEFAULT_BLOCK_SIZE,
                        help=f"block size the image is padded to: {block_size_rule()} "
                             f"(default {DEFAULT_BLOCK_SIZE}; also --bs N, as the OCaml "
                             "docteur.make spells it)")
    parser.add_argument("--compat", choices=("ocaml",), default=None,
                        help="ocaml: an image the OCaml docteur reads completely, in both its "
                             "modes: files stored as 100644, symbolic links as the content of "
                             "their target (refused when it leaves SOURCE; a dangling link left "
                             "out with a warning), submodules and empty emails refused, a directory's commit made as the OCaml builder "
                             "makes it (author Dr. Greenthumb <noreply@cypress.hill>, no "
                             "message); a repository's commit gets the rewritten tree when one "
                             "is needed (see docs/make.md)")
    parser.add_argument("--no-path-index", dest="path_index", action="store_false",
                        help="leave out the path index region (after the IDX) that lets "
                             "readers open the image in O(1) and look paths up without "
                             "walking trees; the image is then the OCaml docteur's layout "
                             "exactly")
    parser.add_argument("--compress", choices=("default", "max", "zopfli"), default="default",
                        help="default: git's zlib streams as pack-objects writes them; max: "
                             "after git's delta search, re-encode every entry's zlib stream "
                             "with libdeflate at level 12 where that is shorter (about 3%% "
                             "smaller, a few seconds per 10 MB of pack on two cores; needs "
                             "pip install 'docteur[max]'); zopfli: libdeflate 12, then "
                             "zopfli on every entry, the shortest kept (a few tenths of a "
                             "percent smaller than max, tens of times slower; needs pip "
                             "install 'docteur[zopfli]')")
    parser.add_argument("--zopfli-iterations", metavar="N", type=options.count, default=None,
                        help="zopfli's iterations per entry with --compress zopfli (default "
                             "15; fewer is faster and slightly bigger)")


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    """What of a directory source goes in."""
    parser.add_argument("--exclude", metavar="PATTERN", action="append", default=[],
                        help="leave out what matches PATTERN (gitignore syntax, matched from "
                             "SOURCE's top, ranked as .git/info/exclude: a .gitignore's !PATTERN "
                             "may bring a file back under --gitignore); repeatable; directory "
                             "sources only")
    parser.add_argument("--gitignore", action="store_true",
                        help="honour the .gitignore files of a directory source as `git add` "
                             "does without --force (nested files, !negation, dir/ and /anchored "
                             "patterns; .gitignore files are stored unless ignored themselves); "
                             "the user's core.excludesFile is not read. A folder left empty by "
                             "--exclude/--gitignore is left out, as git does")


def _signing_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Signing, rebuilding from a previous image, and what is said on stderr."""
    parser.add_argument("--sign", metavar="KEY",
                        help="sign a directory's commit with this SSH key, as git commit -S "
                             "with gpg.format=ssh does: a private key file, or a public key "
                             "whose private half is in ssh-agent; Ed25519 keys sign "
                             "deterministically, RSA and ECDSA keys may not")
    parser.add_argument("--base", metavar="OLD.img",
                        help="a previous image to rebuild from: its objects, deltas and "
                             "compressed bytes are reused as stored after its checksums are "
                             "checked, and the delta search runs on the new objects only; the "
                             "image written is complete, and may replace OLD.img itself")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="the summary line also says what the OCaml docteur's fast "
                             "reader will not see (executables, links, submodules), when "
                             "there is any and --compat ocaml was not given")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="nothing on stderr but errors and warnings (no status line, "
                             "no summary line); the line on stdout (commit and tree ids) "
                             "is data and stays")

def run(args: argparse.Namespace) -> int:
    import signal
    import time

    from . import MakeOptions, make_image
    from .pipeline import filters_refusal
    from .source import classify

    if args.branch is not None and classify(args.source).kind == "directory":
        # A usage error, as below: a plain directory has no branches.
        print(f"docteur make: {args.source}: --branch needs a Git repository, and this is a "
              "plain directory", file=sys.stderr)
        return 2
    if args.sign is not None and classify(args.source).kind != "directory":
        # A usage error, as --branch above: a repository's commit is stored as it is.
        from .pipeline import SIGN_REFUSAL
        print(f"docteur make: {args.source}: {SIGN_REFUSAL}", file=sys.stderr)
        return 2
    if args.exclude or args.gitignore:
        # A usage error, not a build failure: these options mean nothing for a commit.
        if classify(args.source).kind != "directory":
            print(f"docteur make: {filters_refusal(args.exclude, args.gitignore)}, and "
                  f"{args.source} is a Git repository", file=sys.stderr)
            return 2
        from .ignore import exclude_patterns
        try:
            exclude_patterns(args.exclude)
        except BuildError as exc:
            print(f"docteur make: {exc}", file=sys.stderr)
            return 2

    def terminate(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    # SIGTERM cleans up like Ctrl-C: no temporary file left beside IMAGE.
    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    progress: _TerminalProgress | _RecompressLines | None = None
    if not args.quiet and sys.stderr.isatty():
        progress = _TerminalProgress(sys.stderr)
    elif not args.quiet and args.compress != "default":
        progress = _RecompressLines(sys.stderr)

    def warn(text: str) -> None:
        if progress is not None:
            progress.close()  # the status line ends before any other message
        print(f"docteur make: warning: {text}", file=sys.stderr)

    started = time.monotonic()
    try:
        options = MakeOptions(branch=args.branch, date=args.date, author=args.author,
                              message=args.message, block_size=args.block_size,
                              compat=args.compat, path_index=args.path_index,
                              compress=args.compress,
                              zopfli_iterations=args.zopfli_iterations,
                              excludes=tuple(args.exclude), gitignore=args.gitignore,
                              sign=args.sign, base=args.base)
        result = make_image(args.source, args.image, options, progress=progress, warn=warn)
    finally:
        if progress is not None:
            progress.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # Standard output is data (scripts read the commit from it): --quiet keeps it.
    print(f"{args.image}: {result.size} bytes, {result.objects} objects, "
          f"commit {result.commit}, tree {result.tree}"
          + (f" (rewritten from commit {result.source_commit} for --compat ocaml)"
             if result.source_commit != result.commit else "")
          + (f", signed with {result.signed_by}" if result.signed_by else ""))
    if not args.quiet:
        from .summary import summary_line
        line = summary_line(args.image, result.files, result.bytes_in, result.size,
                            result.objects, result.deltas, time.monotonic() - started)
        if args.base is not None:
            line += (f"; {result.reused:,} of {result.objects:,} objects reused from "
                     f"{args.base}")
        if args.verbose and result.ocaml_note:
            line += f"; {result.ocaml_note}"
        print(line, file=sys.stderr)
    return 0


def _ocaml_spellings(parser: argparse.ArgumentParser) -> None:
    """The OCaml docteur.make's options, as its announcement types them: the
    same meaning, so the same destination (separate options, so that a bad
    value is refused with the spelling typed and the long options keep their
    shared wording: `argument --block-size: ...` from every verb)."""
    parser.add_argument("-b", dest="branch", metavar="REF", type=make_options.branch,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("-d", dest="date", metavar="RFC3339", type=make_options.date,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--bs", dest="block_size", metavar="N", type=options.block_size,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _RecompressLines:
    """--compress max or zopfli when stderr is no terminal: the re-encoding's
    progress as a few whole lines (no carriage return) instead of minutes of
    silence: the line it starts with, one every INTERVAL seconds at most,
    and its last. Every other status text is left out (the rest of a build
    says nothing off a terminal)."""

    INTERVAL = 30.0

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown: float | None = None

    def __call__(self, text: str) -> None:
        import re
        import time

        if not text.startswith("Recompressing ("):
            return
        now = time.monotonic()
        m = re.search(r"(\d+)/(\d+) entries", text)
        last = m is not None and m[1] == m[2]
        if self.shown is None or last or now - self.shown >= self.INTERVAL:
            self.shown = now
            print(f"docteur make: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


COMMANDS = {"make": (add_arguments, run)}
