"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chanutil import MAKERS, Pair


@pytest.fixture(params=sorted(MAKERS))
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Two connected channel ends, once per transport."""
    a, b = MAKERS[request.param]()
    yield a, b
    a.close()
    b.close()
