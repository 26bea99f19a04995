from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import RankPool

_pools: dict[int, RankPool] = {}


@pytest.fixture(scope="session")
def ranks():
    """``ranks(n)``: a live gloo group of ``n`` processes, shared by every test of the session."""

    def get(world_size: int) -> RankPool:
        pool = _pools.get(world_size)
        if pool is None or not pool.healthy:
            if pool is not None:
                pool.close()
            pool = _pools[world_size] = RankPool(world_size)
        return pool

    yield get
    for pool in _pools.values():
        pool.close()
    _pools.clear()


@pytest.fixture
def test_models_importable(monkeypatch):
    """Spawned ranks (and this process) can import ``tests/runner_models.py``, which configs name as
    ``python:runner_models:NAME``."""
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(tests)
