"""The fuzzing harness at a small budget: every outcome clean or OK (issue 13).

`fuzz/fuzz.py` mutates small real images (pack entry headers, deltas, zlib
streams, IDX tables, trees, the commit) and runs each through every reader
entry point, `verify` and the plugin's start-up check in a subprocess under
an address-space cap and a timeout. A fixed seed makes the cases the same
on every run; a failure names each distinct problem and where its
reproducer image was saved.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz" / "fuzz.py"

SEED = "ci-1"
CASES = 120


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("docteur_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 120 cases, each through every entry point in a subprocess: ~95 s
def test_fuzz_small_budget_is_clean(tmp_path):
    # The cap is above what the readers' limits let one lookup hold (an
    # object of 512 MiB built on a base of as much: format/limits.py), and
    # bombs follow the cap, so every bomb is over a limit: a MemoryError
    # means a limit was not checked. The timeout is a hang guard.
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--seed", SEED, "--budget", str(CASES),
         "--mem-mb", "2048", "--timeout", "60",
         "--workdir", str(tmp_path / "work"), "--findings", str(tmp_path / "findings"),
         "--json", str(summary)],
        capture_output=True, text=True, timeout=3600)
    assert summary.exists(), proc.stderr[-4000:]
    data = json.loads(summary.read_text())
    counts = data["counts"]
    assert data["cases"] == CASES
    assert not data["errors"], data["errors"][0]
    # The harness did read files and did see damage refused.
    assert counts.get("ok", 0) > 0 and counts.get("clean", 0) > 0, counts
    failures = [f"{f['count']:5d}  {f['key']}  (case {f['first']}: {f['desc']}; {f['op']})"
                for f in data["findings"]]
    assert not failures, "\n".join(["fuzzing found:"] + failures + [proc.stdout[-3000:]])


def test_classifier_catches_each_kind_of_failure():
    """The verdicts the budget test relies on: a silent pass there must mean
    the readers behaved, not that the classifier looked away."""
    fuzz = _fuzz_module()
    case = fuzz.Case(b"", "raw", "flip x1 in zlib data at [1]",
                     expect={"a.txt": (0o100644, b"hello\n")}, path="a.txt", damaged=True)
    cat = {"name": "cat light", "check": "cat", "verify": False}
    good = {"code": 0, "out_sha": __import__("hashlib").sha1(b"hello\n").hexdigest(),
            "out_len": 6, "out_head": "hello\n", "err": ""}
    assert fuzz.classify(cat, good, case)[0] == "ok"
    assert fuzz.classify(cat, dict(good, out_sha="0" * 40), case)[0] == "wrong"
    stat = {"name": "stat fast", "check": "stat", "verify": False}
    assert fuzz.classify(stat, dict(good, out_head="size: 7\n"), case)[0] == "wrong"
    assert fuzz.classify(stat, dict(good, out_head="size: 6\n"), case)[0] == "ok"
    one = {"code": 1, "err": "docteur cat: damaged image: bad zlib, offset 40\n"}
    assert fuzz.classify(cat, one, case)[0] == "clean"
    assert fuzz.classify(cat, dict(one, err="a\nb\n"), case)[0] == "noisy"
    exc = {"exc": "IndexError", "msg": "list index out of range", "where": "x.py:1 f"}
    assert fuzz.classify(cat, exc, case)[0] == "traceback"
    assert fuzz.classify(cat, {"exc": "MemoryError", "msg": "", "where": "x"}, case)[0] == "memory"
    assert fuzz.classify(cat, {"hang": True}, case)[0] == "hang"
    verify = {"name": "verify", "check": "accept"}
    assert fuzz.classify(verify, dict(good, out_sha="1" * 40), case)[0] == "wrong"
    forged = fuzz.Case(b"", "entry", "entry 3 delta: flip", forged=True,
                       expect={"a.txt": (0o100644, b"hello\n")}, path="a.txt")
    assert fuzz.classify(cat, dict(good, out_sha="0" * 40), forged)[0] == "silent"
    assert fuzz.classify(dict(cat, verify=True), dict(good, out_sha="0" * 40), forged)[0] == "wrong"


def test_mutated_images_parse_and_differ(tmp_path):
    """Every mutation family yields an image different from its base, from
    the same seed the same bytes (deterministic cases)."""
    fuzz = _fuzz_module()
    bases = fuzz.build_bases(tmp_path / "bases")
    models = {k: fuzz.Model(v) for k, v in bases.items()}
    fuzz.SCALE[0] = 0.0  # bombs at their 1 MiB floor: this test is about structure
    m = models["a"]
    for fn, _ in fuzz.MUTATORS:
        changed = 0
        for i in range(4):
            a = fn(m, random.Random(f"t:{fn.__name__}:{i}"))
            b = fn(m, random.Random(f"t:{fn.__name__}:{i}"))
            assert a.image == b.image and a.desc == b.desc
            changed += a.image != m.data
        assert changed, fn.__name__  # some mutations may be no-ops, not all
