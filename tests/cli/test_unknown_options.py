"""An unknown option inside a verb is that verb's usage error: its usage
line, its name (`docteur make: error: ...`), only the unknown option (not
the words it shifted), and `did you mean --branch?` when one known option
is close. It was the top level's: `usage: docteur [-h] [--version] COMMAND
...` and `unrecognized arguments: --brnch x.img`."""

from __future__ import annotations

import pytest

from docteur_core import cli


def refused(argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("argv, expected", [
    (["make", "--brnch", "main", "repo", "x.img"], "unrecognized option --brnch (did you mean --branch?)"),
    (["ls", "--jsn", "disk.img"], "unrecognized option --jsn (did you mean --json?)"),
    (["ls", "--jsn"], "unrecognized option --jsn (did you mean --json?)"),  # before "IMAGE is missing"
    (["verify", "disk.img", "--quik"], "unrecognized option --quik (did you mean --quick?)"),
    (["extract", "--frce", "disk.img", "out"], "unrecognized option --frce (did you mean --force?)"),
    (["serve", "--prt", "10810", "disk.img"], "unrecognized option --prt (did you mean --port?)"),
    (["cat", "--block-sise=4096", "disk.img", "f"],
     "unrecognized option --block-sise=4096 (did you mean --block-size?)"),
    (["ls", "--zzz", "disk.img"], "unrecognized option --zzz"),
    (["ls", "--zzz", "--yyy", "disk.img"], "unrecognized options: --zzz --yyy"),
])
def test_the_verb_refuses_its_unknown_option(capsys, argv, expected):
    lines = refused(argv, capsys)
    verb = argv[0]
    assert lines[0].startswith(f"usage: docteur {verb} "), lines
    assert lines[-1] == f"docteur {verb}: error: {expected}"


def test_surplus_words_without_an_option_are_still_named(capsys):
    lines = refused(["cat", "disk.img", "a", "b"], capsys)
    assert lines[0].startswith("usage: docteur cat ")
    assert lines[-1] == "docteur cat: error: unrecognized arguments: b"


@pytest.mark.qemu
def test_known_spellings_still_parse():
    """Abbreviations argparse accepts, `=VALUE`, short flags together, and
    the guest's own options after boot's IMAGE are not unknown options."""
    parser, _ = cli.build_parser()
    args = parser.parse_args(["ls", "-rl", "--js", "disk.img"])
    assert args.recursive and args.json
    assert parser.parse_args(["make", "--bra=main", "src", "x.img"]).branch == "main"
    assert parser.parse_args(["boot", "disk.img", "ls", "-l", "--json"]).command == \
        ["ls", "-l", "--json"]
