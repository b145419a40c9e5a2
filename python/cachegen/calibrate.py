"""Calibrate a `ModelProfile`: measure how much each (layer, K/V, head) costs in output quality.

For each calibration text the model prefills a prefix, then continues over the rest with the
prefix cache intact except one head of one layer's K or V replaced by its level-coded version;
the mean KL divergence of the next-token distributions from the intact run is that head's
sensitivity. High-rate theory makes the rate-optimal step proportional to sensitivity^-1/2
(every head then adds the same distortion); `strength` below 1/2 hedges against measurement
noise on a few texts. The key channels' RoPE frequency bands are measured the same way, each
band of every layer's keys coded at once. Costs 2 * layers * heads + bands continuation passes
per text (SmolLM2-135M with a 1536-token prefix and a 256-token continuation: about 3.5 minutes
per text on two cores).

One more pass with attention weights fits the token-importance model (`cachegen.importance`):
per layer, the log of the attention mass each prefix token receives from the continuation,
against its keys' RoPE pair magnitudes. Needs torch and transformers (the `hf` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .api import decode, encode
from .config import LEVEL_SINK_TOKENS, CodecConfig
from .hf import from_cache, to_cache
from .importance import fit, pair_magnitudes
from .profile import ModelProfile, band_of_channels
from .weights import RECENCY_REFERENCE

# Tokens left out of the importance fit: the sink, and the last ones, whose attention is
# mostly recency (the recency law's business).
_FIT_SKIP = (1, RECENCY_REFERENCE)


#: The coding whose errors calibration measures: key step 0.5, values 1.0, the levels' sink,
#: recency exponent 0.5 (the shipped profiles were measured so, with the sink then at 8 bits; a
#: mid-ladder point, kept independent of the ladder).
MEASURE_CONFIG = CodecConfig(
    key_param=0.5,
    value_param=1.0,
    sink_tokens=LEVEL_SINK_TOKENS,
    recency=0.5,
    name="calibration",
)


def calibrate(
    model: Any,
    texts: Sequence[Any],
    *,
    name: str,
    config: CodecConfig | None = None,
    continuation: int = 256,
    strength: float = 0.35,
    bound: float = 4.0,
    key_bands: int = 4,
) -> ModelProfile:
    """Measure a profile for `model` (a transformers causal LM) on token-id tensors `texts`.

    Args:
        texts: `[1, n]` int tensors; each text's last `continuation` tokens are scored, the rest
            is the prefix. Never calibrate on text you evaluate on.
        name: recorded as `ModelProfile.model`.
        config: the coding whose errors are measured (default: `MEASURE_CONFIG`).
        strength: exponent turning sensitivity into step weights (0.5 = high-rate optimum).
        bound: weights are clipped to [1/bound, bound].
        key_bands: RoPE frequency bands of the key channels, measured and weighted apiece
            (0: none).
    """
    import torch

    config = config or MEASURE_CONFIG
    if not texts:
        raise ValueError("calibrate needs at least one text")
    heads: list[list[np.ndarray]] = []
    bands: list[np.ndarray] = []
    features: list[list[np.ndarray]] = []
    mass: list[list[np.ndarray]] = []
    for ids in texts:
        if ids.shape[-1] <= continuation + sum(_FIT_SKIP):
            raise ValueError(
                f"a calibration text needs more than {continuation + sum(_FIT_SKIP)} tokens"
            )
        f, m = _attention_mass(model, ids, continuation, torch)
        features.append(f)
        mass.append(m)
        h, b = _sensitivity(model, ids, config, continuation, key_bands, torch)
        heads.append(_relative(h))  # each text counts equally
        bands.append(_relative([b])[0] if key_bands else b)
    weights = [
        np.clip(np.mean(g, axis=0) ** -strength, 1.0 / bound, bound)
        for g in zip(*heads, strict=True)
    ]
    band_w = np.clip(np.mean(bands, axis=0) ** -strength, 1.0 / bound, bound)
    band_w = band_w / np.exp(np.log(band_w).mean()) if key_bands else band_w  # keeps layer steps
    return ModelProfile(
        model=name,
        key_weights=_rows(weights[0::2]),
        value_weights=_rows(weights[1::2]),
        calibration=(
            f"{len(texts)} texts, {config.name}, continuation {continuation}, "
            f"strength {strength}, bound {bound}, {key_bands} key bands"
        ),
        importance=tuple(
            tuple(fit([f[layer] for f in features], [m[layer] for m in mass]))
            for layer in range(len(features[0]))
        ),
        key_bands=tuple(float(x) for x in band_w),
    )


def _relative(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Sensitivities divided by their geometric mean over all entries."""
    mean_log = np.concatenate([np.log(g) for g in groups]).mean()
    return [g / np.exp(mean_log) for g in groups]


def _rows(w: list[np.ndarray]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in layer) for layer in w)


def _attention_mass(
    model: Any, ids: Any, cont: int, torch: Any
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: the prefix tokens' key features and the mean attention each receives from the
    continuation (over query heads and positions), both without the `_FIT_SKIP` tokens."""
    prefix, tail = ids[:, :-cont], ids[:, -cont:]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the fused kernels return no attention weights
    try:
        with torch.inference_mode():
            kv = from_cache(model(prefix, use_cache=True).cache)
            out = model(tail, cache=to_cache(kv, model.config), output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    n = prefix.shape[-1]
    keep = slice(_FIT_SKIP[0], n - _FIT_SKIP[1])
    features = [pair_magnitudes(k[0].swapaxes(0, 1))[keep] for k, _ in kv]
    mass = [a[0, :, :, :n].double().mean((0, 1)).numpy()[keep] for a in out.attentions]
    return features, mass


def _sensitivity(
    model: Any, ids: Any, config: CodecConfig, cont: int, bands: int, torch: Any
) -> tuple[list[np.ndarray], np.ndarray]:
    """Mean KL of the continuation when one part of the cache alone is coded, floored at 1e-9:
    per group (K0, V0, K1, ...) each head's, and each key band's over all layers and heads."""
    prefix, tail = ids[:, :-cont], ids[:, -cont:]
    with torch.inference_mode():
        kv = from_cache(model(prefix, use_cache=True).cache)

    def log_probs(cache_kv: list) -> Any:
        with torch.inference_mode():
            logits = model(tail, cache=to_cache(cache_kv, model.config), use_cache=True).logits
        return torch.log_softmax(logits[0].double(), dim=-1)

    def band_mask(layer: int, band: int) -> Any:
        return torch.from_numpy(band_of_channels(kv[layer][0].shape[-1], bands) == band)

    ref = log_probs(kv)
    ref_p = ref.exp()  # once: each of the 2 * layers * heads + bands passes compares against it
    coded = decode(encode(kv, config=config), framework="torch")

    def kl(mixed: list) -> float:
        return max((ref_p * (ref - log_probs(mixed))).sum(-1).mean().item(), 1e-9)

    def with_coded(parts: dict[tuple[int, int], Any]) -> list:
        """The cache with, for each (layer, side) -> index in `parts`, that index of the tensor
        taken from the coded cache."""
        mixed = [list(pair) for pair in kv]
        for (layer, side), index in parts.items():
            t = mixed[layer][side].clone()
            t[index] = coded[layer][side][index].to(t.dtype)
            mixed[layer][side] = t
        return mixed

    per_head = [
        np.array([kl(with_coded({(layer, side): (slice(None), h)})) for h in range(t.shape[1])])
        for layer in range(len(kv))
        for side, t in enumerate(kv[layer])
    ]
    per_band = [
        kl(with_coded({(layer, 0): (..., band_mask(layer, band)) for layer in range(len(kv))}))
        for band in range(bands)
    ]
    return per_head, np.array(per_band)
