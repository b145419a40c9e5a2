"""Calibrate the bundled SmolLM2 model profile on texts that the quality benchmark never scores.

    python bench/smollm2_profile.py [--out python/cachegen/profiles/smollm2-135m-instruct.json]

Calibration texts: GPL-1, GPL-2 and LGPL-2.1 from /usr/share/common-licenses and the sources of
Python's difflib, typing and pathlib (the benchmark scores GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3
and argparse's source). Same prefix/continuation split as the quality benchmark. About 13
minutes on two cores (twice the three texts of bench/results/calibrate_time.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cachegen
from cachegen import profiles
from lib.kvquality import load_documents, load_model
from lib.kvquality.docs import CALIBRATION_DOCS

PREFIX, CONTINUATION = 1536, 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=profiles.path(profiles.SMOLLM2))
    args = ap.parse_args()
    lm = load_model()
    texts = [lm.first_ids(d.text, PREFIX + CONTINUATION) for d in load_documents(CALIBRATION_DOCS)]
    t0 = time.perf_counter()
    profile = cachegen.calibrate(lm.model, texts, name=profiles.SMOLLM2, continuation=CONTINUATION)
    texts_note = f"; texts {', '.join(CALIBRATION_DOCS)} ({PREFIX} + {CONTINUATION})"
    profile = dataclasses.replace(profile, calibration=profile.calibration + texts_note)
    profile.save(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s, digest {profile.digest[:16]}")


if __name__ == "__main__":
    main()
