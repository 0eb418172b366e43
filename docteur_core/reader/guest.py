"""The guest entry point: `python3 -m docteur_core.reader.guest DEVICE [OPTIONS] VERB [PATH]`.

Runs on a bare interpreter (`python3 -S`, nothing but this package on
PYTHONPATH), typically on `/dev/vda` inside a VM, or on an NBD URI. The
verbs are the `docteur` command's (ls, cat, stat, tree, info), shared with
`commands.py`; the arguments are parsed by hand so that start-up
imports nothing but the reader.

Options: `--mode fast|light` (default light), `--commit ID` (the image must
hold that commit: `docteur boot` passes the one it pinned), `--no-verify`
(trust the image's CRC-32s and path index instead of hashing every object
back to the commit: see reader/image.py, "Trust"), `--block-size N`.
Exit status: 0 on success, 1 on an error (one line on stderr: not found,
not a directory, damaged or wrong image...), 2 on a usage error.
"""

from __future__ import annotations

import sys

USAGE = ("usage: python3 -m docteur_core.reader.guest DEVICE [--mode fast|light] "
         "[--commit ID] [--no-verify] [--block-size N] {ls [-r] [-l] [--json] [PATH] | cat PATH | stat [--json] PATH | "
         "tree [PATH] | info [--json]}")


def _usage(message: str) -> int:
    sys.stderr.write(f"docteur-guest: {message}\n{USAGE}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    from .commands import FLAGS, VERBS
    from .vocabulary import DEFAULT_MODE, MODES

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        return 0 if argv else 2
    mode, verify, block_size, commit = DEFAULT_MODE, True, None, None
    positional: list[str] = []
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional.extend(argv[i + 1:])
            break
        if a.startswith("--mode"):
            value = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if value not in MODES:
                return _usage(f"--mode must be fast or light, not {value!r}")
            mode = value
            continue
        if a.startswith("--commit"):
            value = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if len(value) != 40 or any(c not in "0123456789abcdefABCDEF" for c in value):
                return _usage(f"--commit needs 40 hexadecimal digits, not {value!r}")
            commit = value.lower()
            continue
        if a == "--verify":  # the default; kept for old command lines
            verify = True
        elif a == "--no-verify":
            verify = False
        elif a in ("-r", "-l", "--json"):
            flags.add(a)
        elif a.startswith("--block-size"):
            value = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if not value.isdigit():
                return _usage(f"--block-size needs a number, not {value!r}")
            block_size = int(value)
            continue
        elif a.startswith("--") and len(a) > 2:
            return _usage(f"unknown option {a}")
        else:
            positional.append(a)
        i += 1
    if len(positional) < 2:
        return _usage("a DEVICE and a VERB are needed")
    device, verb, args = positional[0], positional[1], positional[2:]
    if verb not in VERBS:
        return _usage(f"unknown verb {verb!r}")
    _, lo, hi, usage = VERBS[verb]
    if not lo <= len(args) <= hi:
        return _usage(f"{verb} takes {usage or 'no arguments'}")
    if flags - FLAGS.get(verb, frozenset()):
        return _usage(f"{verb} does not take {' '.join(sorted(flags - FLAGS.get(verb, frozenset())))}")

    from ..errors import DocteurError
    from .image import Image
    from .commands import run_verb

    try:
        with Image.open(device, mode, verify=verify, commit=commit,
                        block_size=block_size) as image:
            return run_verb(image, verb, args, sys.stdout.buffer, flags)
    except DocteurError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"docteur {verb}: {exc}\n")
        return 1
    except ValueError as exc:  # e.g. a block size that is not a power of two
        sys.stderr.write(f"docteur {verb}: {exc}\n")
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
