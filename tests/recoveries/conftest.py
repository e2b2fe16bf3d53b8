"""Fixtures shared by the recovery tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def work(rq_worker: Callable[..., None]) -> Callable[..., None]:
    """The bulk-start tests' name for `rq_worker`: the bulk job, then the sends it scheduled."""
    return rq_worker
