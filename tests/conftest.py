"""Fixtures every folder of the suite may use, and the markers that say what
a test needs.

Markers (pyproject.toml lists them): a test that needs an outside program
says so, so that `pytest -m "not qemu and not solo5 and not oracle"` runs
the pure core and the host tools without guests or peers.
"""

from __future__ import annotations

import pytest

from tests.helpers import ocaml_oracle as oc
from tests.helpers.mounts import Mounts


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
