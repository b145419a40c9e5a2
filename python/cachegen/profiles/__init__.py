"""Model profiles shipped with cachegen (made by bench/smollm2_profile.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..profile import ModelProfile

#: SmolLM2-135M-Instruct, the bundled small model (`cachegen.smollm2`).
SMOLLM2 = "smollm2-135m-instruct"


def path(name: str) -> Path:
    """Where the shipped profile `name` lives."""
    return Path(str(resources.files(__package__).joinpath(f"{name}.json")))


def load(name: str) -> ModelProfile:
    """A shipped profile by name (`SMOLLM2`); FileNotFoundError for an unknown one."""
    return ModelProfile.load(path(name))


def resolve(spec: str | None) -> ModelProfile | None:
    """A profile named in an engine config: a path (``*.json``), a shipped name, or None."""
    if spec is None:
        return None
    return ModelProfile.load(spec) if spec.endswith(".json") else load(spec)
