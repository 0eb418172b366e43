"""The parser of one verb: an unknown option is that verb's usage error.

argparse hands a subcommand's unknown words back to the top-level parser,
which then prints `docteur`'s usage instead of the verb's and lists every
word left over, shifted positionals included: `docteur make --brnch main
repo x.img` said `unrecognized arguments: --brnch x.img`, having taken
`main` as SOURCE. Here the verb's own parser refuses the options it does
not know, with its usage line and its name (`docteur make: error: ...`),
names only the unknown options (the shifted words are a consequence, not
the mistake) and suggests the closest known option, as git does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

# How alike (difflib's ratio) a known option must be to be suggested.
_CLOSE = 0.6


class VerbParser(argparse.ArgumentParser):
    """An ArgumentParser for one verb (`add_subparsers(parser_class=...)`)."""

    _words: list[str] = []

    def parse_known_args(self, args: Iterable[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        """What argparse's subcommand action calls: leftovers are refused here,
        so that the error carries this verb's usage, not the top level's."""
        self._words = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._words, namespace)
        if extras:
            options = [w for w in extras if _looks_like_option(w)]
            if options:
                self.error(self._unrecognized(options))
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        """argparse checks required arguments before it reports leftovers:
        `ls --jsn` would say IMAGE is missing. The unknown option comes first."""
        if message.startswith("the following arguments are required"):
            unknown = [w for w in self._before_separator() if _looks_like_option(w)
                       and not self._knows(w)]
            if unknown:
                message = self._unrecognized(unknown)
        super().error(message)

    def _before_separator(self) -> list[str]:
        words = self._words
        return words[:words.index("--")] if "--" in words else words

    def _knows(self, word: str) -> bool:
        """True when argparse would take `word` as one of this parser's
        options: spelled out, with `=VALUE`, abbreviated (a prefix of a long
        option), or a cluster of short flags / a short option with its value."""
        name = word.split("=", 1)[0]
        known = self._option_string_actions
        if name in known:
            return True
        if name.startswith("--"):
            return self.allow_abbrev and any(o.startswith(name) for o in known)
        return word[:2] in known

    def _unrecognized(self, options: list[str]) -> str:
        if len(options) > 1:
            return f"unrecognized options: {' '.join(options)}"
        option = options[0]
        close = self._closest(option.split("=", 1)[0])
        return f"unrecognized option {option}" + (f" (did you mean {close}?)" if close else "")

    def _closest(self, name: str) -> str | None:
        """The known long option most like `name`, if one is close enough."""
        import difflib

        if not name.startswith("--"):
            return None
        longs = [o for o in self._option_string_actions if o.startswith("--")]
        match = difflib.get_close_matches(name, longs, n=1, cutoff=_CLOSE)
        return match[0] if match else None


def _looks_like_option(word: str) -> bool:
    """What argparse would read as an option: a leading dash, but not `-`
    alone (standard input) nor a negative number."""
    if not word.startswith("-") or word == "-":
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False
