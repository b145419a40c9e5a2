"""Model profiles: per (layer, K/V, head) step weights, key weights per RoPE frequency band and a
per-layer token-importance model, calibrated once per model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Weights = tuple[tuple[float, ...], ...]  # [layer][head]
Coefficients = tuple[tuple[float, ...], ...]  # [layer][heads * head_dim/2]


def band_of_channels(head_dim: int, bands: int) -> np.ndarray:
    """The RoPE frequency band (0 = highest frequency) of each channel of a head: channels i and
    i + head_dim/2 form pair i, and pairs are cut into `bands` equal runs."""
    half = head_dim // 2
    return np.arange(head_dim) % half * bands // half


@dataclass(frozen=True)
class ModelProfile:
    """Step multipliers per (layer, K/V, head): > 1 where the model tolerates more error.

    Attributes:
        model: what the profile was calibrated for (a name; not checked against the model).
        key_weights / value_weights: `[layer][head]` step multipliers.
        calibration: how it was made (text, level, tokens), for the record.
        importance: per layer, coefficients predicting a token's log attention mass from its
            keys (`cachegen.importance`): `heads * head_dim/2` on the RoPE pair magnitudes, then,
            with `rope_thetas`, `heads * head_dim` on the key channels rotated back to position
            0; empty for none.
        key_bands: step multipliers of the key channels by RoPE frequency band, highest
            frequency first (pair p of a head, channels p and p + head_dim/2, is in band
            `p * len(key_bands) // (head_dim/2)`), geometric mean 1; empty for none. Low
            frequencies carry what a query matches regardless of distance: finer steps there.
        rope_thetas: the model's RoPE base per layer (default rotate-half RoPE), which the
            importance model's signed key features need; empty where it reads magnitudes only
            (profiles made before them, or models with another RoPE).
    """

    model: str
    key_weights: Weights
    value_weights: Weights
    calibration: str = ""
    importance: Coefficients = ()
    key_bands: tuple[float, ...] = ()
    rope_thetas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.key_weights) != len(self.value_weights) or not self.key_weights:
            raise ValueError("profile needs K and V weights for the same, non-zero layer count")
        for w in (
            *self.key_weights,
            *self.value_weights,
            *((self.key_bands,) if self.key_bands else ()),
        ):
            if not w or not all(2.0**-10 <= x <= 2.0**10 for x in w):
                raise ValueError("profile weights must be in [2^-10, 2^10]")
        if self.importance and len(self.importance) != self.num_layers:
            raise ValueError("profile importance needs one coefficient row per layer")
        if not all(np.isfinite(row).all() for row in self.importance):
            raise ValueError("profile importance coefficients must be finite")
        if self.rope_thetas and (
            not self.importance
            or len(self.rope_thetas) != self.num_layers
            or not all(np.isfinite(t) and t > 1.0 for t in self.rope_thetas)
        ):
            raise ValueError("profile RoPE bases need importance and one base > 1 per layer")

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
        w = np.repeat(rel, head_dim)
        if side == 0 and self.key_bands:
            w *= np.tile(self.band_pattern(head_dim), len(rel))
        return w.astype(np.float32)

    def band_pattern(self, head_dim: int) -> np.ndarray:
        """The key band weights spread over one head's channels."""
        bands = np.asarray(self.key_bands, dtype=np.float64)
        return bands[band_of_channels(head_dim, len(bands))]

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
        need = 2 * len(self.key_bands)
        if need and any(g.head_dim % 2 or g.head_dim < need for g in groups[::2]):
            raise ValueError(f"profile {self.model!r}: key bands need an even head_dim >= {need}")
        for layer, row in enumerate(self.importance):
            k = groups[2 * layer]
            if k.head_dim % 2:
                raise ValueError(f"profile {self.model!r}: importance needs an even head_dim")
            need = self.importance_width(k.heads, k.head_dim)
            if len(row) != need:
                raise ValueError(
                    f"profile {self.model!r}: layer {layer} importance needs "
                    f"{need} coefficients, has {len(row)}"
                )

    def importance_width(self, heads: int, head_dim: int) -> int:
        """Coefficients per layer of the importance model over `heads` keys of `head_dim`."""
        return heads * (head_dim // 2) + (heads * head_dim if self.rope_thetas else 0)

    def to_json(self) -> str:
        body = {
            "model": self.model,
            "calibration": self.calibration,
            "key_weights": [[round(x, 4) for x in w] for w in self.key_weights],
            "value_weights": [[round(x, 4) for x in w] for w in self.value_weights],
        }
        if self.key_bands:
            body["key_bands"] = [round(x, 4) for x in self.key_bands]
        if self.importance:
            body["importance"] = [[float(f"{x:.5g}") for x in row] for row in self.importance]
        if self.rope_thetas:
            body["rope_thetas"] = list(self.rope_thetas)
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
                key_bands=tuple(float(x) for x in d.get("key_bands", ())),
                rope_thetas=tuple(float(x) for x in d.get("rope_thetas", ())),
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
