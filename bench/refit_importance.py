"""Fit a profile's token-importance model anew (`cachegen.refit_importance`) with the signed key
features, keeping its measured weights: the shipped SmolLM2 profile on its six calibration texts,
Gemma-3's (bench/results/gemma3-270m-profile.json, from bench/calibrate_time.py) on its three.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=python:bench python bench/refit_importance.py \\
        --model smollm2 --profile python/cachegen/profiles/smollm2-135m-instruct.json
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=python:bench python bench/refit_importance.py \\
        --model gemma3 --profile bench/results/gemma3-270m-profile.json --texts 3

The profile is rewritten in place unless `--out` names another file. Same prefix/continuation
split as calibration (1536 + 256 tokens), texts `CALIBRATION_DOCS` (the first `--texts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cachegen
from lib.kvquality import CONT_TOKENS, PREFIX_TOKENS, load_documents, load_model
from lib.kvquality.docs import CALIBRATION_DOCS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--texts", type=int, default=len(CALIBRATION_DOCS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lm = load_model(args.model)
    names = CALIBRATION_DOCS[: args.texts]
    texts = [lm.first_ids(d.text, PREFIX_TOKENS + CONT_TOKENS) for d in load_documents(names)]
    t0 = time.perf_counter()
    old = cachegen.ModelProfile.load(args.profile)
    profile = cachegen.refit_importance(lm.model, texts, old, continuation=CONT_TOKENS)
    note = "; importance refitted with signed key features (bench/refit_importance.py)"
    if note not in profile.calibration:
        profile = dataclasses.replace(profile, calibration=profile.calibration + note)
    profile.save(args.out or args.profile)
    took = time.perf_counter() - t0
    print(f"refitted {args.profile} in {took:.0f} s, digest {profile.digest[:16]}")


if __name__ == "__main__":
    main()
