"""Compare calibrated profiles of one model: their weights, and their quality on held-out text.

    OMP_NUM_THREADS=1 python bench/calibrate_compare.py /tmp/full.json /tmp/fast.json \
        --model smollm2 --docs GPL-3,python:argparse --levels 5,15,27

Weights: per (layer, K/V, head) and per key band, the correlation of the log weights of each
profile with the first one's and the largest ratio between them. Quality: each profile at each
level on each document (never a calibration text), KL(uncompressed || decoded) of the
continuation's next-token distributions and bits per element, as the quality benchmark scores
them (1536-token prefix, 256 continuation tokens). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import cachegen
from lib.kvquality import evaluate, load_document, load_model, prepare
from lib.kvquality.methods import codec_method
from lib.runinfo import RunInfo

PREFIX, CONT = 1536, 256


def weights(profile: cachegen.ModelProfile) -> np.ndarray:
    """Every head weight (layer-major, K then V) and band weight of `profile`."""
    heads = np.stack([profile.key_weights, profile.value_weights], axis=1)  # layer, K/V, head
    return np.concatenate([heads.ravel(), np.asarray(profile.key_bands)])


def agreement(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    log_a, log_b = np.log(base), np.log(other)
    return {
        "log_weight_correlation": round(float(np.corrcoef(log_a, log_b)[0, 1]), 6),
        "max_ratio": round(float(np.exp(np.abs(log_a - log_b).max())), 6),
        "identical": bool(np.array_equal(base, other)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--docs", default="GPL-3,python:argparse")
    ap.add_argument("--levels", default="5,15,27")
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = RunInfo.capture()
    profiles = {str(p): cachegen.ModelProfile.load(p) for p in args.profiles}
    base = weights(next(iter(profiles.values())))
    record: dict = {
        "weights": {p: agreement(base, weights(prof)) for p, prof in profiles.items()},
        "quality": [],
    }
    lm = load_model(args.model)
    for doc in args.docs.split(","):
        case = prepare(lm, load_document(doc), PREFIX, CONT)
        for level in (int(x) for x in args.levels.split(",")):
            for path, prof in profiles.items():
                method = codec_method(f"cg{level}", path, level=level, profile=prof)
                r = evaluate(lm, case, method)
                record["quality"].append(
                    {
                        "doc": doc,
                        "level": level,
                        "profile": path,
                        "kl_mean": r.kl_mean,
                        "bits_per_element": r.bits_per_element,
                    }
                )
    record["run"] = info.finish().as_dict()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
