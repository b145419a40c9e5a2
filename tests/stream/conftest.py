"""Every streaming test starts with no bandwidth known and its own calibration cache."""

from __future__ import annotations

import pytest

from cachegen.stream.estimator import forget_estimates


@pytest.fixture(autouse=True)
def _fresh_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CACHEGEN_COSTS", str(tmp_path_factory.mktemp("costs") / "costs.json"))
    forget_estimates()
    yield
    forget_estimates()
