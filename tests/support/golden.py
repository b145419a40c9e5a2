"""Golden blobs: deterministic inputs (integer hashing, no RNG or libm) and the blobs that
freeze each wire format version (`<case>.v<version>.cgkv`) and each revision of the encoder's
choices within a version (`<case>.v<version>e<revision>.cgkv` from revision 2 on). A case is
written in the version the encoder writes it in: 4, 5 with a transform record, 6 with an
overflow list.
`python tests/support/golden.py` writes the current version's and revision's blobs into
tests/data/ and keeps the older ones, only for a deliberate format or encoder change."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

import cachegen
from cachegen.transform import Basis, Rope, Transform

DATA = Path(__file__).parents[1] / "data"
# The encoder's choices within the current format version: 2 chooses the table count by the
# size the tables and the table map take as written (1 charged a rough 6 bits per table entry
# and 8 bits per column of the map).
ENCODER_REVISION = 2


def deterministic_kv(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Roughly Gaussian values from a multiplicative hash, identical on every platform."""
    i = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed * 1_000_003)
    acc = np.zeros(i.shape, np.float64)
    for k in range(4):
        h = (i * np.uint64(2654435761 + 2 * k) + np.uint64(k * 40503)) % np.uint64(1 << 32)
        acc += h.astype(np.float64) / 2**32 - 0.5
    channel_scale = 1.0 + (np.arange(shape[-1]) % 5)
    return (acc.reshape(shape) * channel_scale).astype(np.float32)


def exact_transform(layers: int, heads: int, head_dim: int) -> Transform:
    """A transform whose inverse is exact in fp32 on every platform: signed permutations, a
    dyadic mean, and RoPE at zero frequency (cos 1, sin 0)."""
    c = heads * head_dim

    def basis(shift: int) -> Basis:
        vectors = np.zeros((c, c), np.float32)
        vectors[np.arange(c), (np.arange(c) * 5 + shift) % c] = np.where(np.arange(c) % 3, 1, -1)
        mean = ((np.arange(c) + shift) % 7 - 3).astype(np.float32) / 4
        return Basis(mean, vectors, np.ones(c, np.float32), heads)

    return Transform(
        tuple(basis(2 * i) for i in range(layers)),
        tuple(basis(2 * i + 1) for i in range(layers)),
        Rope(tuple(np.zeros(head_dim // 2, np.float32) for _ in range(layers))),
    )


@functools.cache  # read only; blob names and the manifest consult it per case
def cases() -> dict[str, tuple[object, cachegen.CodecConfig, Transform | None]]:
    stacked = deterministic_kv((3, 2, 50, 2, 24), 1).astype(np.float16)
    pairs = [
        (deterministic_kv((1, 2, 40, 16), 2), deterministic_kv((1, 2, 40, 16), 3)),
        (deterministic_kv((1, 1, 17, 8), 4), deterministic_kv((1, 1, 17, 12), 5)),
    ]
    small = cachegen.CodecConfig("channel", "token", 0.6, 0.6, max_tables=4, segment_symbols=1024)
    sink = cachegen.CodecConfig(key_param=0.4, value_param=1.2, sink_tokens=1, recency=0.75)
    plain = {
        "stacked_f16_sink": (stacked, sink),
        "stacked_f16_steps": (stacked, cachegen.CodecConfig("channel", "token", 0.5, 0.7, 8)),
        "stacked_f16_ref2": (
            stacked,
            replace(cachegen.CodecConfig.cachegen_reference(2), max_tables=8),
        ),
        "pairs_f32_segments": (pairs, small),
        "stacked_f16_lossless": (stacked, cachegen.CodecConfig.lossless()),
        "pairs_f32_lossless": (pairs, replace(cachegen.CodecConfig.lossless(), max_tables=4)),
        # Steps finer than most rows' range / 127: symbols beyond 8 bits in an overflow list.
        "pairs_f32_overflow": (pairs, replace(small, value_param=0.004, overflow=True)),
    }
    found = {name: (kv, config, None) for name, (kv, config) in plain.items()}
    found["stacked_f16_transform"] = (stacked, sink, exact_transform(3, 2, 24))
    return found


def golden_transforms() -> dict[str, Transform]:
    """The transforms the golden blobs name, by digest."""
    return {t.digest(): t for _, _, t in cases().values() if t is not None}


def written_version(case: str) -> int:
    _, config, transform = cases()[case]
    return 6 if config.overflow else 5 if transform is not None else 4


def digest(kv: object) -> str:
    arrays = [kv] if isinstance(kv, np.ndarray) else [t for pair in kv for t in pair]
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def blob_name(case: str, version: int | None = None, revision: int = ENCODER_REVISION) -> str:
    version = written_version(case) if version is None else version
    return f"{case}.v{version}" + (f"e{revision}" if revision > 1 else "")


def main() -> None:
    DATA.mkdir(exist_ok=True)
    path = DATA / "golden.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for case, (kv, config, transform) in cases().items():
        blob = cachegen.encode(kv, config=config, transform=transform)
        name = blob_name(case)
        (DATA / f"{name}.cgkv").write_bytes(blob)
        manifest[name] = {
            "decoded_sha256": digest(cachegen.decode(blob, transforms=golden_transforms())),
            "bytes": len(blob),
            "version": written_version(case),
        }
    path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
