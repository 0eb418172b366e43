"""Fixtures every folder of the suite may use, and the markers that say what
a test needs.

Markers (pyproject.toml lists them): a test that needs an outside program
says so, so that `pytest -m "not qemu and not solo5 and not oracle"` runs
the pure core and the host tools without guests or peers. The markers are
checked (tests/helpers/needs.py): a test that starts nbdkit, nginx,
fusermount3, QEMU or Solo5, or uses the `mounts` or `oracle` fixture,
without the marker fails. Hypothesis runs each test's own example count,
or at most a few under DOCTEUR_HYPOTHESIS_PROFILE=dev (tests/helpers/profiles.py).
"""

from __future__ import annotations

import pytest

from tests.helpers import ocaml_oracle as oc
from tests.helpers import needs, profiles
from tests.helpers.mounts import Mounts

_spawns: needs.Spawns | None = None
PROFILE = profiles.load()


def pytest_configure(config):
    global _spawns
    _spawns = needs.Spawns()


def pytest_unconfigure(config):
    if _spawns is not None:
        _spawns.close()


def pytest_collection_modifyitems(config, items):
    if PROFILE == "dev":
        profiles.cap(items)
    wrong = [f"{item.nodeid}: needs @pytest.mark.{', '.join(lacks)}"
             for item in items if (lacks := needs.check_fixtures(item))]
    if wrong:
        raise pytest.UsageError("tests whose fixtures need a marker they lack:\n"
                                + "\n".join(wrong))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "teardown" or _spawns is None:
        return
    started = _spawns.started_by(item.nodeid)
    lacks = sorted(started - {m.name for m in item.iter_markers()})
    if not lacks:
        return
    said = (f"{item.nodeid} started programs that need the markers "
            f"{', '.join(lacks)}, which it lacks (tests/helpers/needs.py)")
    report = outcome.get_result()
    report.outcome = "failed"
    report.longrepr = said


@pytest.fixture(scope="session")
def oracle() -> oc.Oracle:
    """The OCaml docteur, built once per run (.ci/oracle)."""
    return oc.Oracle(oc.built())


@pytest.fixture
def mounts():
    """Mounts made by the test, undone at its end whatever happened."""
    m = Mounts()
    try:
        yield m
    finally:
        m.cleanup()
