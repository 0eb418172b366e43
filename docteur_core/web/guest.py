"""The guest's web server: `python3 -m docteur_core.web.guest DEVICE [OPTIONS]`.

What `docteur boot IMAGE --http PORT` runs in the guest on /dev/vda: the
server of `docteur http` (start.py), the arguments parsed by hand so that
start-up imports nothing but the reader and the server (no argparse).

Options: `--listen HOST:PORT` (default 0.0.0.0:80), `--commit ID` (the
image must hold that commit: the host passes the one it pinned),
`--no-verify`, `--listing`, `--readers N` (default 2), `--mode
fast|light`, `--block-size N`, `-q` (no access log). Lines go to stderr
(the serial console, which the host shows): the start line, one per
request. Exit status: 0 when stopped, 1 on an error (one line), 2 on a
usage error.
"""

from __future__ import annotations

import sys

# A guest has little memory (256 MB by default) and its /tmp is in it:
# each reader's object cache and the server's bodies are kept smaller than
# on a host.
GUEST_CACHE_BYTES = 24 << 20

USAGE = ("usage: python3 -m docteur_core.web.guest DEVICE [--listen HOST:PORT] [--commit ID] "
         "[--no-verify] [--listing] [--readers N] [--mode fast|light] [--block-size N] [-q]")


def _usage(message: str) -> int:
    sys.stderr.write(f"docteur-http-guest: {message}\n{USAGE}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    from ..reader.vocabulary import DEFAULT_MODE, MODES

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        return 0 if argv else 2
    listen, commit, verify, listing, readers = "0.0.0.0:80", None, True, False, 2
    mode, block_size, quiet = DEFAULT_MODE, None, False
    device = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--listen", "--commit", "--readers", "--mode", "--block-size"):
            if i + 1 >= len(argv):
                return _usage(f"{a} needs a value")
            value = argv[i + 1]
            i += 2
            if a == "--listen":
                listen = value
            elif a == "--commit":
                if len(value) != 40 or any(c not in "0123456789abcdefABCDEF" for c in value):
                    return _usage(f"--commit needs 40 hexadecimal digits, not {value!r}")
                commit = value.lower()
            elif a == "--mode":
                if value not in MODES:
                    return _usage(f"--mode must be fast or light, not {value!r}")
                mode = value
            elif not value.isdigit() or int(value) <= 0:
                return _usage(f"{a} needs a positive number, not {value!r}")
            elif a == "--readers":
                readers = int(value)
            else:
                block_size = int(value)
            continue
        if a == "--no-verify":
            verify = False
        elif a == "--listing":
            listing = True
        elif a == "-q":
            quiet = True
        elif a.startswith("-"):
            return _usage(f"unknown option {a}")
        elif device is None:
            device = a
        else:
            return _usage(f"one DEVICE only, not {a!r} too")
        i += 1
    if device is None:
        return _usage("a DEVICE is needed")
    from .server import parse_listen

    try:
        address = parse_listen(listen, "0.0.0.0")
    except ValueError as exc:
        return _usage(str(exc))

    from ..errors import DocteurError
    from ..reader.image import Image
    from .start import serve

    def say(line: str) -> None:
        sys.stderr.write(f"docteur http: {line}\n")
        sys.stderr.flush()

    images = []
    try:
        try:
            first = Image.open(device, mode, verify=verify, commit=commit,
                               block_size=block_size, cache_bytes=GUEST_CACHE_BYTES)
            images.append(first)
            pinned = first.store.commit_id
            for _ in range(readers - 1):
                images.append(Image.open(device, mode, verify=verify, commit=pinned,
                                         block_size=block_size,
                                         cache_bytes=GUEST_CACHE_BYTES))
            return serve(images, address, listing=listing, quiet=quiet, say=say,
                         source=device, cache_bytes=GUEST_CACHE_BYTES)
        finally:
            for image in images:
                image.close()
    except DocteurError as exc:
        say(str(exc))
        return 1
    except ValueError as exc:  # a block size that is not a power of two
        say(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
