"""`docteur http IMAGE|URI`: serve the files of an image over HTTP."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..reader.image import Image

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_READERS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Serve the files of an image as a static web site, over HTTP/1.1.

    Nothing is extracted: each file is read from the image (a file, a
    device, an NBD URI or an http(s):// URL) when first asked for, checked
    against its id back to the commit (unless --no-verify), and kept for
    the next clients. Stops on Ctrl-C (or SIGTERM), exit status 0.

    What it answers (docs/http.md has the details):
      GET, HEAD              another method is 405
      /folder/               its index.html; without one, 404, or with
                             --listing a list of its entries
      /folder                301 to /folder/
      a symbolic link        302 to its target inside the image; a target
                             out of it (absolute, or above the root) is 404
      .., %2e%2e, %2F, .git  404, before the image is asked
      ETag                   the file's blob id (strong); If-None-Match,
                             If-Modified-Since: 304; If-Match,
                             If-Unmodified-Since: 412
      Last-Modified          the date of the image's commit
      Content-Type           from the extension (Python's built-in table)
      Range                  206 (several ranges: multipart/byteranges),
                             416 when none fits; If-Range
      a damaged object       500, none of its bytes sent (each file is
                             checked whole before its first byte goes out)

    Connections are kept alive (HTTP/1.1) and served concurrently: one
    loop answers what is already read, --readers threads read the image
    (each with its own reader). One access-log line per request on stderr
    (the combined log format; -q for none). The first line on stderr
    says where it listens: with --listen HOST:0 the port the system chose.

    Examples:
      docteur http site.img                       http://127.0.0.1:8080/
      docteur http site.img --listen 0.0.0.0:80   every address, port 80
      docteur http --commit ID nbd://server/site  pinned to a commit
    """
    from .. import options
    from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES

    parser.add_argument("image", metavar="IMAGE", help="an image file, a device, an NBD URI "
                        "(nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH), or an "
                        "http(s):// URL (read by range requests)")
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        type=_listen,
                        help=f"where to listen (default {DEFAULT_LISTEN}: this machine "
                        "only; 0.0.0.0:PORT or [::]:PORT for every address; port 0: any "
                        "free port, printed)")
    parser.add_argument("--listing", action="store_true",
                        help="list a folder that has no index.html (default: 404)")
    parser.add_argument("--readers", metavar="N", type=options.count, default=DEFAULT_READERS,
                        help="threads reading the image, each with its own reader and "
                        "caches (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no access log (the start line and errors still go to stderr)")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
    options.add_reading_arguments(parser)


def _listen(text: str) -> tuple[str, int]:
    from .server import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def open_images(source: str, args: argparse.Namespace, count: int) -> list[Image]:
    """`count` readers of `source`: the first opened with every check
    `args` asks for (pin, signers), the others pinned to the commit it
    holds, so that all of them read the same image."""
    import copy

    from ..trust import open_image

    limits = dict(max_object_size=args.max_object_size, max_lookup_bytes=args.max_lookup_bytes,
                  max_paths=args.max_paths)
    first = open_image(source, args, **limits)
    images = [first]
    try:
        pinned = copy.copy(args)
        pinned.commit = first.store.commit_id.hex()
        pinned.allowed_signers = None
        for _ in range(count - 1):
            images.append(open_image(source, pinned, **limits))
    except BaseException:
        for image in images:
            image.close()
        raise
    return images


def run(args: argparse.Namespace) -> int:
    from ..errors import DamagedImage, DocteurError

    def say(line: str) -> None:
        print(f"docteur http: {line}", file=sys.stderr, flush=True)

    try:
        images = open_images(args.image, args, args.readers)
    except DamagedImage as exc:
        raise DocteurError(f"{args.image}: {exc}") from None
    from .start import serve

    try:
        return serve(images, args.listen, listing=args.listing, quiet=args.quiet, say=say,
                     source=args.image)
    finally:
        for image in images:
            image.close()


COMMANDS = {"http": (add_arguments, run)}
