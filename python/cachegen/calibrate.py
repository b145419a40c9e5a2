"""Calibrate a `ModelProfile`: measure how much each (layer, K/V, head) costs in output quality.

For each calibration text the model prefills a prefix, then continues over the rest with the
prefix cache intact except one head of one layer's K or V replaced by its level-coded version;
the mean KL divergence of the next-token distributions from the intact run is that head's
sensitivity. High-rate theory makes the rate-optimal step proportional to sensitivity^-1/2
(every head then adds the same distortion); `strength` below 1/2 hedges against measurement
noise on a few texts. The key channels' RoPE frequency bands are measured the same way, each
band of every layer's keys coded at once. Costs 2 * layers * heads + bands continuation passes
per text; a pass that changes layer L's cache computes only the layers from L up, the ones below
replaying the text's reference run (`cachegen.replay`): SmolLM2-135M with a 1536-token prefix and
a 256-token continuation takes 220-260 s of CPU per text, 2 minutes of two cores. A progress
bar shows the passes, each result kept on disk as it comes (`cachegen.measurements`) so that a
rerun after a failure resumes.

One more pass with attention weights fits the token-importance model (`cachegen.importance`):
per layer, the log of the attention mass each prefix token receives from the continuation,
against its keys' RoPE pair magnitudes and, where the model's RoPE is the default one, its keys
rotated back to position 0 (the profile then records the RoPE bases).

Sliding-window layers keep only their last tokens: every per-layer measurement uses the prefix
tokens the layer keeps, by absolute position, and the continuation queries that see them.
Needs torch and transformers (the `hf` extra).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .api import FORMAT_VERSION, decode, encode
from .config import LEVEL_SINK_TOKENS, CodecConfig
from .hf import eager_attention, from_cache, layer_window, mean_attention, to_cache
from .importance import fit, key_features, profile_rope
from .measurements import Measurements, run_digest
from .profile import ModelProfile, band_of_channels
from .replay import LayerReplay, decoder_layers
from .transform import TransformError, rope_thetas
from .weights import RECENCY_REFERENCE

# Tokens left out of the importance fit: the sink (context position 0), and the prefix's last
# ones, whose attention is mostly recency (the recency law's business).
_FIT_SKIP = (1, RECENCY_REFERENCE)


#: The coding whose errors calibration measures: key step 0.5, values 1.0, the levels' sink,
#: recency exponent 0.5: a mid-ladder point, kept independent of the ladder so that retuning the
#: ladder leaves calibrated profiles valid (how the shipped ones were measured:
#: bench/results/ladder_experiments.md).
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
    progress: bool = True,
    resume: bool = True,
    replay: bool = True,
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
        progress: show a bar of passes done / total on stderr.
        resume: keep each measurement under `cachegen.paths.user_cache_dir()` as it is made,
            keyed by a digest of the model (config and weights), the texts and the settings, so
            that a rerun after a failure measures only what is missing; removed once done.
            `strength` and `bound` only shape the result: they are not part of the key.
        replay: a pass that changes the cache of layers >= L only replays the outputs the
            layers below L gave in the text's reference run instead of computing them: the
            same measurements at about half the cost. Checked once per text on the model at
            hand, with full passes where replaying does not give the reference run back;
            False always runs full passes (to time them, say).
    """
    import torch

    config = config or MEASURE_CONFIG
    _check_texts(texts, continuation)
    shapes = _group_shapes(model, texts[0], torch)
    thetas = _thetas(model.config)
    settings = {
        "config": repr(config),
        "continuation": continuation,
        "key_bands": key_bands,
        "format": FORMAT_VERSION,
        "rope_thetas": thetas,
    }
    digest = run_digest(model, texts, settings) if resume else None
    total = len(texts) * (1 + sum(heads for heads, _ in shapes) + key_bands)
    log = Measurements.for_run(digest, total, progress)
    try:
        runs = [
            _measure_text(
                model, ids, f"text{i}", config, (continuation, key_bands), shapes, log, replay
            )
            for i, ids in enumerate(texts)
        ]
    except BaseException:
        log.close(finished=False)  # keeps what was measured for the rerun
        raise
    log.close(finished=True)
    profile = _profile(runs, name, config, continuation, strength, bound, key_bands)
    return dataclasses.replace(profile, rope_thetas=thetas)


def _thetas(config: Any) -> tuple[float, ...]:
    """The model's RoPE bases for the importance model's signed features; () where its RoPE is
    not the default one (magnitudes only)."""
    try:
        return tuple(rope_thetas(config)[0])
    except (TransformError, AttributeError, KeyError):
        return ()


@dataclass
class _TextRun:
    """What one calibration text measured."""

    #: Per layer: the fitted tokens' key features and attention mass.
    features: list[np.ndarray]
    mass: list[np.ndarray]
    #: Per group (K0, V0, K1, ...): each head's KL; and each key band's.
    heads: list[np.ndarray]
    bands: np.ndarray


def _check_texts(texts: Sequence[Any], continuation: int) -> None:
    if not texts:
        raise ValueError("calibrate needs at least one text")
    need = continuation + sum(_FIT_SKIP)
    if any(ids.shape[-1] <= need for ids in texts):
        raise ValueError(f"a calibration text needs more than {need} tokens")


def _group_shapes(model: Any, ids: Any, torch: Any) -> list[tuple[int, int]]:
    """(heads, head_dim) of each cache group K0, V0, K1, ..., from a one-token prefill."""
    with torch.inference_mode():
        kv = from_cache(model(ids[:, :1], use_cache=True).cache)
    return [(t.shape[1], t.shape[3]) for pair in kv for t in pair]


def _measure_text(
    model: Any,
    ids: Any,
    label: str,
    config: CodecConfig,
    sizes: tuple[int, int],
    shapes: list[tuple[int, int]],
    log: Measurements,
    replay: bool,
) -> _TextRun:
    """The attention pass and the sensitivity passes of one text, each loaded when `log` has
    it."""
    import torch

    cont, bands = sizes  # continuation tokens, key bands
    layers = len(shapes) // 2

    def attention() -> dict[str, np.ndarray]:
        features, mass = _attention_mass(model, ids, cont, torch)
        return {
            f"{kind}{i}": a
            for kind, arrays in (("f", features), ("m", mass))
            for i, a in enumerate(arrays)
        }

    found = log.arrays(f"{label}-attention", attention)

    def measure(name: str, run: Callable[[], float]) -> float:
        return log.value(f"{label}:{name}", run)

    heads, per_band = _sensitivity(
        model, ids, config, cont, bands, shapes, measure, torch, replay=replay
    )
    return _TextRun(
        features=[found[f"f{i}"] for i in range(layers)],
        mass=[found[f"m{i}"] for i in range(layers)],
        heads=heads,
        bands=per_band,
    )


def _profile(
    runs: list[_TextRun],
    name: str,
    config: CodecConfig,
    continuation: int,
    strength: float,
    bound: float,
    key_bands: int,
) -> ModelProfile:
    """The profile from every text's measurements; each text counts equally."""
    heads = [_relative(r.heads) for r in runs]
    bands = [_relative([r.bands])[0] if key_bands else r.bands for r in runs]
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
            f"{len(runs)} texts, {config.name}, continuation {continuation}, "
            f"strength {strength}, bound {bound}, {key_bands} key bands"
        ),
        importance=_importance([r.features for r in runs], [r.mass for r in runs]),
        key_bands=tuple(float(x) for x in band_w),
    )


def refit_importance(
    model: Any, texts: Sequence[Any], profile: ModelProfile, *, continuation: int = 256
) -> ModelProfile:
    """`profile` with its token-importance model fitted anew on `texts` as `calibrate` fits it
    (the attention pass alone: seconds per text, the weights kept as measured), e.g. to give a
    profile made before the signed key features (`ModelProfile.rope_thetas`) them."""
    import torch

    _check_texts(texts, continuation)
    runs = [_attention_mass(model, ids, continuation, torch) for ids in texts]
    importance = _importance([f for f, _ in runs], [m for _, m in runs])
    return dataclasses.replace(profile, importance=importance, rope_thetas=_thetas(model.config))


def _importance(
    features: list[list[np.ndarray]], mass: list[list[np.ndarray]]
) -> tuple[tuple[float, ...], ...]:
    """Per layer, the importance model fitted on every text's features and mass (per text, per
    layer)."""
    return tuple(
        tuple(fit([f[layer] for f in features], [m[layer] for m in mass]))
        for layer in range(len(features[0]))
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
    """Per layer: the key features of the prefix tokens the layer keeps (signed ones where the
    model's RoPE is the default one, `_thetas`) and the mean attention each receives from the
    continuation queries that see it (over query heads), both without the `_FIT_SKIP` tokens."""
    thetas = _thetas(model.config)
    prefix, tail = ids[:, :-cont], ids[:, -cont:]
    n = prefix.shape[-1]
    with eager_attention(model), torch.inference_mode():
        kv = from_cache(model(prefix, use_cache=True).cache)
        cache = to_cache(kv, model.config, seq_length=n)
        windows = [layer_window(layer) for layer in cache.layers]
        out = model(tail, cache=cache, output_attentions=True)
    features, mass = [], []
    queries = range(n, n + cont)
    for layer, ((k, _), a, window) in enumerate(zip(kv, out.attentions, windows, strict=True)):
        kept = k.shape[2]  # the layer's last `kept` prefix tokens lead its attention's keys
        rows = _fit_rows(n, kept)
        rope = profile_rope(thetas, k.shape[3])
        features.append(key_features(k[0].swapaxes(0, 1), 1, rope, layer, n - kept)[rows])
        mass.append(mean_attention(a, slice(0, kept), n - kept, queries, window)[rows])
    return features, mass


def _fit_rows(n: int, kept: int) -> slice:
    """Which of a layer's `kept` last prefix tokens (of `n`) the fit uses: not the sink where
    the layer still holds it, not the prefix's last `_FIT_SKIP[1]`."""
    first = n - kept  # context position of the layer's first kept token
    start = max(_FIT_SKIP[0] - first, 0)
    return slice(start, max(kept - _FIT_SKIP[1], start))


@dataclass
class _Coded:
    """A text's prefix cache, its coded version and the continuation's reference log-probs."""

    model: Any
    tail: Any
    prefix_tokens: int
    kv: list
    coded: list
    replay: LayerReplay
    ref: Any = None
    ref_p: Any = None

    @classmethod
    def of(
        cls,
        model: Any,
        ids: Any,
        config: CodecConfig,
        cont: int,
        torch: Any,
        *,
        replay: bool = True,
    ) -> _Coded:
        prefix, tail = ids[:, :-cont], ids[:, -cont:]
        with torch.inference_mode():
            kv = from_cache(model(prefix, use_cache=True).cache)
        coded = decode(encode(kv, config=config), framework="torch")
        layers = decoder_layers(model, len(kv)) if replay else []
        self = cls(model, tail, prefix.shape[-1], kv, coded, LayerReplay(layers))
        self.ref = self.replay.record(lambda: self.log_probs(kv), torch.equal)
        self.ref_p = self.ref.exp()  # once: every pass compares against it
        return self

    def log_probs(self, cache_kv: list) -> Any:
        import torch

        cache = to_cache(cache_kv, self.model.config, seq_length=self.prefix_tokens)
        with torch.inference_mode():
            logits = self.model(self.tail, cache=cache, use_cache=True).logits
        return torch.log_softmax(logits[0].double(), dim=-1)

    def kl(self, parts: dict[tuple[int, int], Any]) -> float:
        """Mean KL of the continuation, floored at 1e-9, when for each (layer, side) -> index
        in `parts` that index of the cache is taken from the coded cache. The layers below the
        first one changed replay their outputs of the reference run."""
        mixed = [list(pair) for pair in self.kv]
        for (layer, side), index in parts.items():
            t = mixed[layer][side].clone()
            t[index] = self.coded[layer][side][index].to(t.dtype)
            mixed[layer][side] = t
        with self.replay.starting_at(min(layer for layer, _ in parts)):
            log_p = self.log_probs(mixed)
        return max((self.ref_p * (self.ref - log_p)).sum(-1).mean().item(), 1e-9)


def _sensitivity(
    model: Any,
    ids: Any,
    config: CodecConfig,
    cont: int,
    bands: int,
    shapes: list[tuple[int, int]],
    measure: Callable[[str, Callable[[], float]], float],
    torch: Any,
    *,
    replay: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Mean KL of the continuation when one part of the cache alone is coded: per group (K0,
    V0, K1, ...) each head's, and each key band's over all layers and heads. `measure(name,
    run)` returns a stored result or runs the pass; the prefill and the reference run only
    when some pass does."""
    coded = functools.cache(
        functools.partial(_Coded.of, model, ids, config, cont, torch, replay=replay)
    )

    def kl(name: str, parts: dict[tuple[int, int], Any]) -> float:
        return measure(name, lambda: coded().kl(parts))

    def band_mask(head_dim: int, band: int) -> Any:
        return torch.from_numpy(band_of_channels(head_dim, bands) == band)

    per_head = [
        np.array([kl(f"g{g}h{h}", {(g // 2, g % 2): (slice(None), h)}) for h in range(heads)])
        for g, (heads, _) in enumerate(shapes)
    ]
    keys = list(enumerate(shapes[0::2]))
    per_band = [
        kl(f"band{band}", {(layer, 0): (..., band_mask(dim, band)) for layer, (_, dim) in keys})
        for band in range(bands)
    ]
    return per_head, np.array(per_band)
