"""Hypothesis profiles: `ci` (the default: every test's own example count,
as written next to it) and `dev` (at most DEV_EXAMPLES examples per test,
for a contributor's quick loop), chosen by DOCTEUR_HYPOTHESIS_PROFILE.

Why a ceiling and not just a profile: most property tests here state their
own `max_examples` (what that property needs to mean something, measured
when it was written), and an explicit `@settings` wins over any profile. So
`dev` also lowers each collected test's own settings to the ceiling
(`cap`), and leaves alone what is already below it. `.ci/run` sets no
profile: CI runs the counts as written. `.ci/core` uses `dev` unless told
otherwise (docs/testing.md).
"""

from __future__ import annotations

import os

from hypothesis import settings

VARIABLE = "DOCTEUR_HYPOTHESIS_PROFILE"
DEV_EXAMPLES = 10

settings.register_profile("ci")  # hypothesis's defaults; each test's own settings win
settings.register_profile("dev", max_examples=DEV_EXAMPLES)


def load() -> str:
    """Load the profile the environment names (`ci` when none); return its name."""
    name = os.environ.get(VARIABLE, "") or "ci"
    if name not in ("ci", "dev"):
        raise ValueError(f"{VARIABLE}={name!r}: the profiles are ci and dev")
    settings.load_profile(name)
    return name


def cap(items, ceiling: int = DEV_EXAMPLES) -> None:
    """Lower the example count each hypothesis test states to `ceiling`."""
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is None or not getattr(test, "is_hypothesis_test", False):
            continue
        if own.max_examples > ceiling:
            test._hypothesis_internal_use_settings = settings(own, max_examples=ceiling)
