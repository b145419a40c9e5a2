"""A per-model decorrelating transform of the KV cache: per layer, a KLT over all the layer's
channels (heads together), keys made RoPE-aware.

Keys are cached after RoPE, which rotates each channel pair (i, i + head_dim/2) of a head by a
position-dependent angle; before RoPE they are a low-rank projection of the hidden state. So
keys are first rotated back to position 0 (`Rope`, the rotate-half convention Hugging Face
models apply), then, like values, centered by the layer's mean and projected on the
eigenvectors of their covariance, strongest first. The coefficients have the cache's shape and
dtype, so they go through `cachegen.encode`/`decode` unchanged; `inverse` undoes the projection
and rotates keys to their positions again.

    t = learn_transform([kv_a, kv_b], Rope.from_config(model.config))  # or hf.learn_model_transform
    blob = cachegen.encode(kv, 15, transform=t, position=p)   # forward(kv, t, p), coded
    kv2 = cachegen.decode(blob, transforms=t)                  # inverse(coefficients, t, p)

Each channel is first divided by its step weight (`Basis.weights`), so the error the codec's
equal steps leave in it grows with the weight: `learn_transform(weights=channel_weights(...))`
takes a profile's measured weights per head and key band, or without a profile weights the key
channels by the energy of the queries that read them (`cachegen.hf.query_energy`, which
`cachegen.hf.learn_model_transform` measures in the same prefill).

`Transform.digest()` names a transform (sha256 of its canonical bytes). `cachegen.encode(kv,
transform=t, position=p)` runs `forward` and writes a blob that names `t` by digest (format
version 5); `cachegen.decode(blob, transforms=...)` finds it by that digest and runs `inverse`,
and raises `TransformMissing` when it cannot. `put_transform` / `stored_transforms` keep
transforms in a store beside the blobs that name them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._core import FormatError
from .config import LEVELS, CodecConfig
from .kvstats import key_channel_weights
from .profile import ModelProfile
from .tensors import dtype_name, group_arrays, is_torch

if TYPE_CHECKING:
    from .store.base import Store

#: Tokens at the start of a context left out of fitting: the attention sink's keys and values
#: are unlike every other token's.
FIT_SKIP_TOKENS = 1


class TransformError(ValueError):
    """A cache or configuration that does not fit the transform."""


class TransformMissing(FormatError):
    """A blob's groups are coefficients of a transform that the decoder was not given."""

    def __init__(self, digest: str, detail: str = "") -> None:
        super().__init__(
            f"the blob is coded with transform {digest}, which was not supplied"
            + (f" ({detail})" if detail else "")
            + ": pass it as decode(..., transforms=...)"
        )
        self.digest = digest


@dataclass(frozen=True)
class Rope:
    """Per layer, the inverse frequencies `[head_dim / 2]` (float32) of its rotate-half RoPE:
    channel pair (i, i + head_dim/2) at position p is rotated by p * inv_freq[i]."""

    inv_freq: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        for f in self.inv_freq:
            if not isinstance(f, np.ndarray) or f.dtype != np.float32 or f.ndim != 1:
                raise TransformError("RoPE inverse frequencies are 1-D float32 arrays")

    @classmethod
    def from_thetas(cls, thetas: Sequence[float], head_dim: int) -> Rope:
        """Default RoPE with base `thetas[layer]`, computed in float32 as transformers does."""
        if head_dim < 2 or head_dim % 2:
            raise TransformError(f"RoPE needs an even head_dim, got {head_dim}")
        # float32 exponents; the power rounded once to float32, as torch's float32 pow does
        exponents = (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)).astype(
            np.float64
        )
        powers = [(float(theta) ** exponents).astype(np.float32) for theta in thetas]
        return cls(tuple(np.float32(1.0) / p for p in powers))

    @classmethod
    def from_config(cls, config: Any) -> Rope:
        """The RoPE of a Hugging Face text model config (`rope_thetas`)."""
        return cls.from_thetas(*rope_thetas(config))

    def angles(self, layer: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin `[tokens, head_dim]` of `layer` at `positions`."""
        return _angles(self.inv_freq[layer], positions)


def rope_thetas(config: Any) -> tuple[list[float], int]:
    """The RoPE base of each layer and the head_dim of a Hugging Face text model config: one
    base (`rope_theta`), or a base per layer type (`rope_parameters[layer_type]`, e.g. Gemma-3's
    sliding and full layers). Only the default RoPE type is known (no scaling): TransformError
    for another."""
    layers = config.num_hidden_layers
    head_dim = config_head_dim(config)
    params = getattr(config, "rope_parameters", None) or {
        "rope_theta": config.rope_theta,
        "rope_type": "default",
    }
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    per_layer = [params.get(kind, params) for kind in types]
    for p in per_layer:
        if p.get("rope_type", "default") != "default":
            raise TransformError(f"RoPE type {p['rope_type']!r} is not supported")
    return [float(p["rope_theta"]) for p in per_layer], head_dim


def config_head_dim(config: Any) -> int:
    """The head_dim of a Hugging Face text model config (its own, or hidden / query heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _angles(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin `[tokens, head_dim]` at `positions`, in float32 as transformers does."""
    f = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    f = np.concatenate([f, f], axis=1)
    return np.cos(f), np.sin(f)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, back: bool) -> np.ndarray:
    """Rotate-half RoPE of `x` `[tokens, heads, head_dim]` (float32); `back` undoes it."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    s = -sin if back else sin
    return x * cos[:, None, :] + rot * s[:, None, :]


@dataclass(frozen=True)
class Basis:
    """One (layer, K/V) group's transform: coefficients = (x / weights - mean) @ vectors."""

    mean: np.ndarray  # float32 [channels]
    vectors: np.ndarray  # float32 [channels, channels], orthonormal columns, strongest first
    weights: np.ndarray  # float32 [channels]: a channel's error grows with its weight
    heads: int

    @property
    def head_dim(self) -> int:
        return len(self.mean) // self.heads

    @functools.cached_property
    def inverse_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """x = coefficients @ matrix + offset: the weights folded into the basis and the mean
        once, so the inverse is one product and one add per element."""
        matrix = np.ascontiguousarray(self.vectors.T * self.weights)
        return matrix, self.mean * self.weights


@dataclass(frozen=True)
class Transform:
    """Per layer, the key and value bases, and the RoPE keys are rotated back with."""

    keys: tuple[Basis, ...]
    values: tuple[Basis, ...]
    rope: Rope

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def to_bytes(self) -> bytes:
        """Canonical bytes: per layer heads, head_dim, inverse RoPE frequencies, then K's and
        V's mean, vectors and weights, little-endian float32."""
        parts = [_MAGIC, struct.pack("<I", self.num_layers)]
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            parts.append(struct.pack("<II", k.heads, k.head_dim))
            parts.append(self.rope.inv_freq[layer].astype("<f4").tobytes())
            for b in (k, v):
                parts += [a.astype("<f4").tobytes() for a in (b.mean, b.vectors, b.weights)]
        return b"".join(parts)

    def digest(self) -> str:
        """sha256 of `to_bytes()`, hex: the transform's name as a per-model object."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # a transform is immutable: hashed once
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Transform:
        """The transform `to_bytes()` wrote. Every size is checked against the bytes left
        before anything is read or allocated; raises TransformError on anything else."""
        r = _Reader(memoryview(data).cast("B"))
        if bytes(r.take(len(_MAGIC))) != _MAGIC:
            raise TransformError("not a cachegen transform (bad magic)")
        (layers,) = r.unpack("<I")
        if not 1 <= layers <= _MAX_LAYERS:
            raise TransformError(f"transform layer count {layers} out of range")
        freqs, keys, values = [], [], []
        for layer in range(layers):
            heads, head_dim = r.unpack("<II")
            if not (1 <= heads and 2 <= head_dim and head_dim % 2 == 0):
                raise TransformError(f"layer {layer}: bad heads / head_dim {heads}, {head_dim}")
            channels = heads * head_dim
            if channels > _MAX_CHANNELS:
                raise TransformError(f"layer {layer}: {channels} channels, over {_MAX_CHANNELS}")
            freqs.append(r.floats(head_dim // 2))
            for bases in (keys, values):
                mean, vectors, weights = (r.floats(n) for n in (channels, channels**2, channels))
                bases.append(Basis(mean, vectors.reshape(channels, channels), weights, heads))
        if r.left:
            raise TransformError(f"{r.left} trailing bytes after the transform")
        return cls(tuple(keys), tuple(values), Rope(tuple(freqs)))


_MAGIC = b"cachegen-klt-1"
_MAX_LAYERS = 4096
_MAX_CHANNELS = 1 << 14  # a [channels, channels] basis of 1 GiB fp32


class _Reader:
    """Bounds-checked reads from canonical transform bytes."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.left:
            raise TransformError("transform bytes truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def floats(self, n: int) -> np.ndarray:
        a = np.frombuffer(self.take(4 * n), "<f4").astype(np.float32)
        if not np.isfinite(a).all():
            raise TransformError("transform holds NaN or Inf")
        return a


#: What `cachegen.decode(transforms=...)` takes: a transform, a digest -> transform mapping, or
#: a function returning the transform of a digest (None when it has none).
Transforms = Transform | Mapping[str, Transform] | Callable[[str], Transform | None]


def resolve(digest: str, transforms: Transforms | None) -> Transform:
    """The transform named `digest` among `transforms`; TransformMissing if there is none or
    what was found has another digest."""
    if transforms is None or isinstance(transforms, Transform):
        found = transforms
    elif isinstance(transforms, Mapping):
        found = transforms.get(digest)
    else:
        found = transforms(digest)
    if found is None:
        raise TransformMissing(digest)
    if found.digest() != digest:
        raise TransformMissing(digest, f"the transform given for it is {found.digest()}")
    return found


#: What a ladder level means on coefficients (`coefficient_config`), recorded beside transform
#: chunks and contexts so that chunks coded under another meaning are never reused or joined
#: with these. 1: the level's own steps, values three times as coarse as keys; 2: values twice
#: as coarse as keys (tuning texts, SmolLM2 and Gemma-3, with and without a profile: 5-9% fewer
#: bits at KL 0.002 and 0.01, or equal; `bench/results/transform_profile.md`); 3: a token's step
#: as asked for, its symbols beyond 8 bits in an overflow list (`CodecConfig.overflow`;
#: `bench/results/ladder_experiments.md` 41); 4: with a profile, values 1.5 times as coarse as
#: keys (`PROFILED_VALUE_RATIO`; `ladder_experiments.md` 45).
COEFFICIENT_VERSION = 4
#: The coefficient version of transform records that name none.
LEGACY_COEFFICIENT_VERSION = 1
#: A ladder level's value step on coefficients, over its key step.
COEFFICIENT_VALUE_RATIO = 2.0
#: The same with a profile: once the keys' steps follow the profile's importance and shaping,
#: the values carry most of the KL (Gemma-3: 71-78% at levels 9-13), and finer values pay (tuning
#: texts, over 256 tokens: Gemma-3 2% / 12% fewer bits at KL 0.002 / 0.01, SmolLM2 equal).
PROFILED_VALUE_RATIO = 1.5
#: A ladder level on coefficients with token importance (a profile's or observed attention):
#: that importance at this power (`CodecConfig.importance_strength`; the ladder's raw channels
#: take 0.15) and, for a profile's prediction, the recency law at this exponent
#: (`CodecConfig.recency`; otherwise 0.75), both chosen on tuning texts for SmolLM2 and Gemma-3
#: (`bench/results/transform_profile.md`; without a profile that recency cost Gemma-3 bits).
COEFFICIENT_IMPORTANCE = 0.35
COEFFICIENT_RECENCY = 1.25
#: The recency law's exponent where an engine's observed attention weighs the tokens: the
#: context's last queries already favour the tokens near them, so the law need not do it twice
#: (`bench/results/ladder_experiments.md` 40).
OBSERVED_RECENCY = 0.5


def coefficient_config(
    config: CodecConfig, profiled: bool = False, observed: bool = False
) -> CodecConfig:
    """`config` for coefficients: without the key spread, whose RoPE-pair statistics mean
    nothing in the transform's coordinates. A ladder level as it is (`CodecConfig.from_level`)
    takes value steps `COEFFICIENT_VALUE_RATIO` (with a profile `PROFILED_VALUE_RATIO`) times
    its key step, and coded with token importance (`profiled`: a profile's prediction;
    `observed`: an engine's observed attention, alone or with it) also
    `COEFFICIENT_IMPORTANCE` and the recency law at `COEFFICIENT_RECENCY`, or at
    `OBSERVED_RECENCY` where the attention was observed, and keeps every token's step with an
    overflow list (one strong coefficient would otherwise coarsen a whole token, most often an
    important one); a custom config keeps its own."""
    out = dataclasses.replace(config, key_spread=0.0, key_spread_auto=False)
    if config.level not in LEVELS or config != CodecConfig.from_level(config.level):
        return out
    ratio = PROFILED_VALUE_RATIO if profiled else COEFFICIENT_VALUE_RATIO
    value_param = round(ratio * float(out.key_param), 4)
    out = dataclasses.replace(out, value_param=value_param, overflow=True)
    if profiled or observed:
        recency = OBSERVED_RECENCY if observed else COEFFICIENT_RECENCY
        out = dataclasses.replace(out, importance_strength=COEFFICIENT_IMPORTANCE, recency=recency)
    return out


def coefficient_profile(profile: ModelProfile) -> ModelProfile:
    """`profile` for coefficients: each layer's K and V weight (the geometric mean over its
    heads) and the importance model, which reads the raw keys (`plan_encode(keys=...)`); not
    the weights per head or key band, which weigh raw channels that a coefficient mixes."""

    def flat(side: int) -> tuple[tuple[float, ...], ...]:
        heads = (profile.key_weights, profile.value_weights)[side]
        return tuple((profile.layer_weight(i, side),) * len(h) for i, h in enumerate(heads))

    return dataclasses.replace(profile, key_weights=flat(0), value_weights=flat(1), key_bands=())


#: Where a store keeps transforms: `transform/<digest>`.
STORE_PREFIX = "transform/"


def put_transform(store: Store, transform: Transform) -> str:
    """Store `transform` under `transform/<digest>` (once) before blobs naming it are stored;
    returns the key."""
    key = STORE_PREFIX + transform.digest()
    if not store.exists(key):
        store.put(key, transform.to_bytes())
    return key


def stored_transforms(store: Store) -> Callable[[str], Transform | None]:
    """A `transforms=` for `cachegen.decode` that reads `transform/<digest>` from `store` (each
    found once): None while it is missing; ObjectCorrupted when its bytes are not what the
    digest names or do not parse."""
    from .store.errors import ObjectCorrupted, ObjectMissing

    found: dict[str, Transform] = {}  # hits only: a transform stored later is still found

    def get(digest: str) -> Transform | None:
        if digest in found:
            return found[digest]
        key = STORE_PREFIX + digest
        try:
            data = store.get(key)
        except ObjectMissing:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ObjectCorrupted(key, "its bytes do not hash to its digest")
        try:
            found[digest] = Transform.from_bytes(data)
        except TransformError as e:
            raise ObjectCorrupted(key, str(e)) from e
        return found[digest]

    return get


#: Key channels weighted by their queries' energy to this power (`query_energy_weights`): at
#: KL 0.002 on the tuning texts 0.2 beat 0.25 and 0.35 on SmolLM2 and was 3.5% behind 0.25 on
#: Gemma-3 (bench/results/ladder_experiments.md 38).
QUERY_ENERGY_STRENGTH = 0.2

#: Per layer, the K and V channel weights `learn_transform` folds into the bases.
ChannelWeights = Sequence[tuple[np.ndarray, np.ndarray]]


def query_energy_weights(
    energy: np.ndarray, head_dim: int, strength: float = QUERY_ENERGY_STRENGTH
) -> np.ndarray:
    """Step weights `[heads * head_dim]` of a layer's key channels from the energy of the
    queries that read each RoPE pair (`[heads * head_dim/2]`, `cachegen.hf.query_energy`): an
    error in a key pair moves the attention scores in proportion to the query pair that reads
    it, so its step is energy^-strength, as `kvstats.key_channel_weights` weighs pairs (relative
    to the layer's geometric mean, bounded; a pair no query reads, e.g. one a query norm zeroes,
    as the finest)."""
    e = np.asarray(energy, dtype=np.float64)
    if e.ndim != 1 or not np.isfinite(e).all() or (e < 0).any() or not e.any():
        raise TransformError("query energies are finite, >= 0 and not all 0, one per pair")
    return key_channel_weights(e, 1, head_dim, -2.0 * strength)  # energy = 2 rms^2


def channel_weights(
    shapes: Sequence[tuple[int, int]],
    query_energy: Sequence[np.ndarray] | None = None,
    profile: ModelProfile | None = None,
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per layer of `shapes` (heads, head_dim), the K and V channel weights a transform learns
    with (None: none): a `profile`'s weights per head and key band (`ModelProfile.
    channel_weights`; the layer's own weight stays the codec's), measured, so they stand in for
    the key channels' `query_energy_weights`, which a transform learned without a profile takes
    (values unweighted). On four held-out texts at KL 0.002, given the observed attention,
    0.88x and 0.97x the bits of the unweighted transform with a profile (SmolLM2, Gemma-3),
    0.93x and 0.89x without one (bench/results/ladder_experiments.md 38)."""
    if profile is not None:
        if profile.num_layers != len(shapes):
            raise TransformError(f"profile has {profile.num_layers} layers, caches {len(shapes)}")
        return [
            (profile.channel_weights(i, 0, head_dim), profile.channel_weights(i, 1, head_dim))
            for i, (_, head_dim) in enumerate(shapes)
        ]
    if query_energy is None:
        return None
    if len(query_energy) != len(shapes):
        raise TransformError(f"{len(query_energy)} query energies for {len(shapes)} layers")
    return [
        (query_energy_weights(e, head_dim), np.ones(heads * head_dim, np.float32))
        for e, (heads, head_dim) in zip(query_energy, shapes, strict=True)
    ]


def learn_transform(
    caches: Sequence[Any],
    rope: Rope,
    key_spread: float = 0.0,
    skip: int = FIT_SKIP_TOKENS,
    weights: ChannelWeights | None = None,
) -> Transform:
    """Fit the transform to `caches` (each starting at context position 0, all of one model):
    per (layer, K/V), the mean and the covariance's eigenvectors over every token but the first
    `skip` of each cache, keys rotated back to position 0 first. The channels are first divided
    by their step weights, so that the error the codec's equal steps leave in a channel grows
    with its weight: `weights` (per layer, K's and V's `[heads * head_dim]`, e.g. from
    `channel_weights`), times with `key_spread` > 0 those a level's key spread gives the key
    channels (`kvstats.key_channel_weights` of their RoPE pairs' rms over the fit; measured to
    code larger than 0 at equal KL on both models tried: bench/results/transform_codec.md)."""
    if not caches:
        raise TransformError("need at least one cache to learn from")
    layers = [_groups(kv) for kv in caches]
    num_layers = len(layers[0]) // 2
    if any(len(g) != 2 * num_layers for g in layers):
        raise TransformError("caches to learn from differ in layer count")
    _check_rope(rope, num_layers, layers[0])
    given = _checked_weights(weights, layers[0])
    bases = []
    for i in range(2 * num_layers):
        rows = [_fit_rows(g, i, rope, skip) for g in layers]
        if len({r.shape[1] for r in rows}) != 1:
            raise TransformError(f"group {i}: caches to learn from differ in channels")
        spread = key_spread if i % 2 == 0 else 0.0
        bases.append(_klt(np.concatenate(rows), layers[0][i].shape[1], spread, given[i]))
    return Transform(tuple(bases[0::2]), tuple(bases[1::2]), rope)


def _checked_weights(weights: ChannelWeights | None, groups: list[np.ndarray]) -> list:
    """Per group, K first, the given channel weights checked (None for each where none are
    given)."""
    if weights is None:
        return [None] * len(groups)
    if len(weights) != len(groups) // 2:
        raise TransformError(f"{len(weights)} layers of weights for {len(groups) // 2} layers")
    out = []
    for i, g in enumerate(groups):
        w = np.asarray(weights[i // 2][i % 2], dtype=np.float32)
        if w.shape != (g.shape[1] * g.shape[2],) or not (np.isfinite(w) & (w > 0)).all():
            raise TransformError(
                f"layer {i // 2} {'KV'[i % 2]}: channel weights must be {g.shape[1] * g.shape[2]}"
                " finite values > 0"
            )
        out.append(w)
    return out


def forward(kv: Any, transform: Transform, position: int = 0) -> Any:
    """The coefficients of `kv` (a cache whose first token is at context `position`), shaped,
    typed and laid out as `kv`. A layer holding fewer tokens (a sliding window) holds the
    last ones."""
    return _apply(kv, transform, position, inverse=False)


def inverse(coefficients: Any, transform: Transform, position: int = 0) -> Any:
    """The cache whose coefficients are `coefficients` (undoes `forward`)."""
    return _apply(coefficients, transform, position, inverse=True)


def _apply(kv: Any, t: Transform, position: int, inverse: bool) -> Any:
    return _rebuild(kv, _transform_groups(_groups(kv), t, position, inverse))


def inverse_groups(groups: list[np.ndarray], t: Transform, position: int = 0) -> list[np.ndarray]:
    """`inverse` of coefficients given per (layer, K/V) group, K first, as `[tokens, heads,
    head_dim]` arrays: the cache's groups in fp32, without rebuilding a layout (what a decode
    into a caller's output needs)."""
    return _transform_groups(groups, t, position, inverse=True)


def coefficient_buffers(layout: str, shapes: Sequence[tuple[int, int, int]]) -> tuple[Any, list]:
    """fp32 buffers for a blob's coefficients: a cache of `layout` and group `shapes` that
    `cachegen.decode(out=)` takes, and the same memory per group as contiguous `[tokens, heads,
    head_dim]` arrays (so the inverse's products read them without a copy)."""
    if layout == "stacked":
        cache = np.empty((len(shapes) // 2, 2, *shapes[0]), np.float32)
        return cache, [cache[i // 2, i % 2] for i in range(len(shapes))]
    groups = [np.empty(shape, np.float32) for shape in shapes]
    views = [g.transpose(1, 0, 2)[None] for g in groups]  # [1, heads, tokens, head_dim]
    return list(zip(views[0::2], views[1::2], strict=True)), groups


def _transform_groups(
    groups: list[np.ndarray], t: Transform, position: int, inverse: bool
) -> list[np.ndarray]:
    _check(groups, t, position)
    end = position + max(g.shape[0] for g in groups)

    @functools.cache  # layers sharing a RoPE base and a token count share cos and sin
    def angles(freqs: bytes, tokens: int) -> tuple[np.ndarray, np.ndarray]:
        return _angles(np.frombuffer(freqs, np.float32), np.arange(end - tokens, end))

    out = []
    for i, g in enumerate(groups):
        basis = (t.keys, t.values)[i % 2][i // 2]
        x = g.astype(np.float32, copy=False)
        rope = angles(t.rope.inv_freq[i // 2].tobytes(), len(x)) if i % 2 == 0 else None
        out.append(_inverse(x, basis, rope) if inverse else _forward(x, basis, rope))
    return out


def _forward(x: np.ndarray, b: Basis, angles: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if angles is not None:
        x = rotate(x, *angles, back=True)
    rows = x.reshape(len(x), -1) / b.weights - b.mean
    return (rows @ b.vectors).reshape(x.shape)


def _inverse(c: np.ndarray, b: Basis, angles: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    matrix, offset = b.inverse_factors
    x = c.reshape(len(c), -1) @ matrix
    x += offset
    x = x.reshape(c.shape)
    return rotate(x, *angles, back=False) if angles is not None else x


def _fit_rows(groups: list[np.ndarray], i: int, rope: Rope, skip: int) -> np.ndarray:
    """Group `i`'s rows `[tokens, channels]` to fit on, keys rotated back to position 0."""
    x = groups[i].astype(np.float32)
    if i % 2 == 0:
        end = max(g.shape[0] for g in groups)
        x = rotate(x, *rope.angles(i // 2, np.arange(end - len(x), end)), back=True)
        skip = max(skip - (end - len(x)), 0)  # a sliding window may no longer hold the sinks
    return x.reshape(len(x), -1)[skip:].astype(np.float64)


def _klt(rows: np.ndarray, heads: int, spread: float, given: np.ndarray | None) -> Basis:
    if len(rows) < 2:
        raise TransformError("need at least two tokens per group to learn from")
    if not np.isfinite(rows).all():
        raise TransformError("caches to learn from hold NaN or Inf")
    weights = _spread_weights(rows, heads, spread)
    if given is not None:
        weights = weights * given
    rows = rows / weights
    mean = rows.mean(axis=0)
    centered = rows - mean
    variances, vectors = np.linalg.eigh(centered.T @ centered / len(rows))
    vectors = vectors[:, np.argsort(variances)[::-1]]
    # Each vector's sign fixed (largest component positive), so a fit is reproducible.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    return Basis(
        mean.astype(np.float32), np.ascontiguousarray(vectors, dtype=np.float32), weights, heads
    )


def _spread_weights(rows: np.ndarray, heads: int, strength: float) -> np.ndarray:
    """A level's key spread over `rows` `[tokens, heads * head_dim]` (all ones for 0). A pair's
    rms is the same before and after RoPE, so rotated-back keys give the ladder's weights."""
    if strength == 0:
        return np.ones(rows.shape[1], np.float32)
    half = rows.shape[1] // heads // 2
    pairs = np.square(rows).reshape(len(rows), heads, 2, half).sum(axis=(0, 2)).reshape(-1)
    return key_channel_weights(pairs, len(rows), 2 * half, strength)


def _groups(kv: Any) -> list[np.ndarray]:
    """K, V per layer as host `[tokens, heads, head_dim]` arrays (views where possible) of a
    cache in the "stacked" or "pairs" layout, numpy or CPU torch."""
    try:
        arrays = group_arrays(kv)
    except (TypeError, ValueError) as e:
        raise TransformError(str(e)) from e
    return [_host(a) for a in arrays]


def _rebuild(like: Any, groups: list[np.ndarray]) -> Any:
    """`groups` in the layout, framework and dtype of `like`."""
    first = like if _is_array(like) else like[0][0]
    if _is_array(like):
        out = np.stack([np.stack(groups[i : i + 2]) for i in range(0, len(groups), 2)])
        return _like(out, first)
    pairs = [g.transpose(1, 0, 2)[None] for g in groups]
    return [
        (_like(k, first), _like(v, first)) for k, v in zip(pairs[0::2], pairs[1::2], strict=True)
    ]


def _like(a: np.ndarray, like: Any) -> Any:
    """`a` as an array of `like`'s framework and dtype."""
    if not is_torch(like):
        return np.ascontiguousarray(a, dtype=like.dtype)
    import torch as th

    return th.from_numpy(np.ascontiguousarray(a)).to(like.dtype)


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_torch(x)


def _host(x: Any) -> np.ndarray:
    """A numpy view (fp16/fp32) or an fp32 copy (bf16) of a host cache tensor (its dtype was
    checked by `group_arrays`)."""
    bf16 = dtype_name(x) == "bfloat16"
    if is_torch(x):
        if x.device.type != "cpu":
            raise TransformError("the transform runs on CPU tensors")
        x = x.detach()
        return x.float().numpy() if bf16 else x.numpy()
    return x.astype(np.float32) if bf16 else x


def _check_rope(rope: Rope, num_layers: int, groups: list[np.ndarray]) -> None:
    if len(rope.inv_freq) != num_layers:
        raise TransformError(f"RoPE has {len(rope.inv_freq)} layers, the cache {num_layers}")
    for layer in range(num_layers):
        if 2 * len(rope.inv_freq[layer]) != groups[2 * layer].shape[2]:
            raise TransformError(f"layer {layer}: RoPE frequencies do not fit head_dim")


def _check(groups: list[np.ndarray], t: Transform, position: int) -> None:
    if len(groups) != 2 * t.num_layers:
        raise TransformError(f"cache has {len(groups) // 2} layers, the transform {t.num_layers}")
    if position < 0:
        raise TransformError("position must be >= 0")
    for i, g in enumerate(groups):
        b = (t.keys, t.values)[i % 2][i // 2]
        if g.shape[1:] != (b.heads, b.head_dim):
            raise TransformError(
                f"layer {i // 2} {'KV'[i % 2]}: [heads, dim] {g.shape[1:]}, "
                f"transform {(b.heads, b.head_dim)}"
            )
