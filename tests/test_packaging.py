"""Packaging: version ranges (never exact pins) in the library's extras, documented in the
README; one version source; py.typed. The built wheel itself: scripts/wheel_check.sh."""

from __future__ import annotations

import ast
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import cachegen
from cachegen import _core

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Extras a library user installs next to their own stack (test/bench are this project's).
USER_EXTRAS = ("torch", "hf", "store")


def _requirements() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    return [Requirement(r) for r in PROJECT["dependencies"]] + [
        Requirement(r) for name in USER_EXTRAS for r in extras[name]
    ]


def test_user_requirements_are_ranges() -> None:
    for req in _requirements():
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and not ops & {"==", "===", "~="}, req
        if req.name in ("torch", "transformers", "numpy"):
            assert "<" in ops, f"{req}: a major release may break the API we use"


def test_tested_versions_lie_in_the_ranges() -> None:
    """The versions installed here (the tested ones) satisfy every range: installing an extra
    next to them changes nothing."""
    for req in _requirements():
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (req, installed)


def test_readme_lists_every_range() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    ranges = re.findall(r"`([\w.-]+[<>=!~][^`]*)`", section)  # `name>=1,<2`
    listed = {(r.name, r.specifier) for r in map(Requirement, ranges)}
    assert {(r.name, r.specifier) for r in _requirements()} == listed
    assert f"torch {version('torch').split('+')[0]}" in section  # says what is tested


def test_one_version_source() -> None:
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    meta = PYPROJECT["tool"]["scikit-build"]["metadata"]["version"]
    source = (ROOT / meta["input"]).read_text()
    (found,) = re.findall(r'^__version__ = "([^"]+)"', source, re.M)
    assert meta["provider"] == "scikit_build_core.metadata.regex"
    assert found == cachegen.__version__


def test_typed_package() -> None:
    package = Path(cachegen.__file__).parent
    assert (package / "py.typed").is_file()
    assert PYPROJECT["tool"]["scikit-build"]["wheel"]["packages"] == ["python/cachegen"]


def _stub_names(body: list[ast.stmt]) -> set[str]:
    """Names a stub's classes, functions and properties declare."""
    return {n.name for n in body if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def test_native_stub_matches_the_module() -> None:
    """_core.pyi declares every class, function, method and property the native module has,
    and nothing else (the CUDA-only names too, which a CPU build lacks)."""
    package = Path(cachegen.__file__).parent
    stub = ast.parse((package / "_core.pyi").read_text())
    public = {n for n in dir(_core) if not n.startswith("_")}
    declared = _stub_names(stub.body)
    cuda_only = {"DeviceBlob", "DeviceParsed", "to_device", "encode_cuda", "parse_device"}
    cuda_only |= {"cuda_device_name", "cuda_timings", "key_square_sums_cuda"}
    assert public <= declared
    assert declared - public == (set() if _core.build_info()["cuda_compiled"] else cuda_only)
    for cls in (n for n in stub.body if isinstance(n, ast.ClassDef) and n.name in public):
        members = {m for m in vars(getattr(_core, cls.name)) if not m.startswith("_")}
        stubbed = _stub_names(cls.body) - {"__init__"}
        assert members == stubbed, cls.name
