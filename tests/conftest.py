"""Shared fixtures: ``cpu_path`` runs a test once per CPU decode path this machine has."""

from __future__ import annotations

import pytest

import cachegen

CPU_PATHS: list[str] = list(cachegen.build_info()["cpu_paths"])


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The decode path forced through CACHEGEN_CPU_PATH for the test's duration."""
    monkeypatch.setenv("CACHEGEN_CPU_PATH", request.param)
    return request.param
