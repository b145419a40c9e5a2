"""Model profiles: per (layer, K/V, head) step weights and a per-layer token-importance model,
calibrated once per model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Weights = tuple[tuple[float, ...], ...]  # [layer][head]


@dataclass(frozen=True)
class ModelProfile:
    """Step multipliers per (layer, K/V, head): > 1 where the model tolerates more error.

    Attributes:
        model: what the profile was calibrated for (a name; not checked against the model).
        key_weights / value_weights: `[layer][head]` step multipliers.
        calibration: how it was made (text, level, tokens), for the record.
        importance: `[layer][heads * head_dim/2]` coefficients predicting a token's log
            attention mass from its keys' RoPE pair magnitudes (`cachegen.importance`); empty
            for none.
    """

    model: str
    key_weights: Weights
    value_weights: Weights
    calibration: str = ""
    importance: Weights = ()

    def __post_init__(self) -> None:
        if len(self.key_weights) != len(self.value_weights) or not self.key_weights:
            raise ValueError("profile needs K and V weights for the same, non-zero layer count")
        for w in (*self.key_weights, *self.value_weights):
            if not w or not all(2.0**-10 <= x <= 2.0**10 for x in w):
                raise ValueError("profile weights must be in [2^-10, 2^10]")
        if self.importance and len(self.importance) != self.num_layers:
            raise ValueError("profile importance needs one coefficient row per layer")
        if not all(np.isfinite(row).all() for row in self.importance):
            raise ValueError("profile importance coefficients must be finite")

    @property
    def num_layers(self) -> int:
        return len(self.key_weights)

    def _heads(self, layer: int, side: int) -> np.ndarray:
        return np.asarray((self.key_weights, self.value_weights)[side][layer], dtype=np.float64)

    def layer_weight(self, layer: int, side: int) -> float:
        """The layer's share of the weights (geometric mean over heads): scales its step."""
        return float(np.exp(np.log(self._heads(layer, side)).mean()))

    def channel_weights(self, layer: int, side: int, head_dim: int) -> np.ndarray:
        """Per-channel weights relative to the layer's (geometric mean 1 over heads)."""
        rel = self._heads(layer, side) / self.layer_weight(layer, side)
        return np.repeat(rel, head_dim).astype(np.float32)

    def check(self, groups: Sequence[Any]) -> None:
        """Raise ValueError unless the KV groups (K0, V0, K1, ...) match this profile."""
        if len(groups) != 2 * self.num_layers:
            raise ValueError(
                f"profile {self.model!r} has {self.num_layers} layers, KV has {len(groups) // 2}"
            )
        for i, g in enumerate(groups):
            heads = len((self.key_weights, self.value_weights)[i % 2][i // 2])
            if g.heads != heads:
                raise ValueError(f"profile {self.model!r}: layer {i // 2} has {heads} heads")
        for layer, row in enumerate(self.importance):
            k = groups[2 * layer]
            if len(row) != k.heads * (k.head_dim // 2):
                raise ValueError(
                    f"profile {self.model!r}: layer {layer} importance needs "
                    f"{k.heads * (k.head_dim // 2)} coefficients, has {len(row)}"
                )

    def to_json(self) -> str:
        body = {
            "model": self.model,
            "calibration": self.calibration,
            "key_weights": [[round(x, 4) for x in w] for w in self.key_weights],
            "value_weights": [[round(x, 4) for x in w] for w in self.value_weights],
        }
        if self.importance:
            body["importance"] = [[float(f"{x:.5g}") for x in row] for row in self.importance]
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        try:
            d = json.loads(text)
            return cls(
                model=str(d["model"]),
                key_weights=tuple(tuple(float(x) for x in w) for w in d["key_weights"]),
                value_weights=tuple(tuple(float(x) for x in w) for w in d["value_weights"]),
                calibration=str(d.get("calibration", "")),
                importance=tuple(tuple(float(x) for x in row) for row in d.get("importance", ())),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a cachegen model profile: {e!r}") from e

    @property
    def digest(self) -> str:
        """Content hash (sha256 of the JSON), to reference the profile a blob was made with."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
