"""Write man/docteur.1 and a page per verb (man/docteur-VERB.1) from the
argparse definitions the command itself uses, so that a page cannot say
something `docteur VERB --help` does not.

    python3 docs/manpages.py           # (re)write man/
    python3 docs/manpages.py --check   # exit 1 if man/ is not what the code says

tests/cli/test_man_pages.py runs the check: a change to an option's help
without `python3 docs/manpages.py` fails the suite.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["COLUMNS"] = "80"  # argparse wraps usage to the terminal: pages must not depend on it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docteur_core import __version__, cli  # noqa: E402

MAN = ROOT / "man"


def roff(text: str) -> str:
    """Text safe in a roff body: backslashes doubled, a leading dot or quote escaped."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    formatter = parser._get_formatter()  # argparse's own words for each option
    for action in parser._actions:  # argparse has no public walk of its actions
        if action.help == argparse.SUPPRESS:
            continue
        names = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        out += [".TP", f".B {roff(names)}", roff(help_text)]
    return out


def page(name: str, section_title: str, parser: argparse.ArgumentParser, summary: str) -> str:
    """One man page: NAME, SYNOPSIS (argparse's usage), DESCRIPTION, OPTIONS."""
    usage = parser.format_usage().removeprefix("usage: ").strip()
    description = (parser.description or "").strip()
    lines = [
        f'.TH {name.upper()} 1 "" "docteur {__version__}" "{section_title}"',
        ".SH NAME", f"{roff(name)} \\- {roff(summary)}",
        ".SH SYNOPSIS", ".nf", roff(usage), ".fi",
    ]
    if description:
        lines += [".SH DESCRIPTION", ".nf", roff(description), ".fi"]
    lines += [".SH OPTIONS", *_options(parser)]
    lines += [".SH SEE ALSO", "docteur(1); the project's docs/ folder."]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Every page's file name and text."""
    parser, _runners = cli.build_parser()
    out = {"docteur.1": page("docteur", "docteur", parser, "compact, verifiable read-only images")}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for verb, verb_parser in sub.choices.items():
        out[f"docteur-{verb}.1"] = page(f"docteur-{verb}", "docteur", verb_parser,
                                         helps.get(verb) or verb)
    return out


def main(argv: list[str]) -> int:
    wanted = pages()
    if argv == ["--check"]:
        stale = [n for n, text in wanted.items()
                 if not (MAN / n).is_file() or (MAN / n).read_text() != text]
        extra = sorted(p.name for p in MAN.glob("*.1") if p.name not in wanted)
        if stale or extra:
            print(f"man/ is out of date ({', '.join(stale + extra)}): "
                  "run python3 docs/manpages.py", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python3 docs/manpages.py [--check]", file=sys.stderr)
        return 2
    MAN.mkdir(exist_ok=True)
    for stale in MAN.glob("*.1"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (MAN / name).write_text(text)
    print(f"wrote {len(wanted)} pages in {MAN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
