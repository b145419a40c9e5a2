"""Peak-RSS probes of crafted blobs: the blobs of tests/test_hostile_memory.py (written from the
spec with blobcraft) and a fresh-process measurement of one call on one of them. Shared by that
test and bench/hostile_memory.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import blobcraft as bc

C = 16
FIXED = 24 << 20

# Peak RSS is reset (clear_refs 5) after the baseline, so the growth is the call's own.
_MEASURE = textwrap.dedent(
    """
    import json, sys
    import cachegen
    blob = open(sys.argv[1], "rb").read()
    op, cap = sys.argv[2], int(sys.argv[3])
    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    base = kib("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    result, out_bytes = "ok", 0
    try:
        if op == "inspect":
            cachegen.inspect(blob)
        elif op == "stats":
            cachegen.entropy_stats(blob)
        else:
            kv = cachegen.decode(blob, framework="numpy", max_output_bytes=cap)
            out_bytes = sum(a.nbytes for pair in kv for a in pair)
    except cachegen.FormatError as e:
        result = "FormatError: " + str(e)
    growth = (kib("VmHWM:") - base) * 1024
    print(json.dumps({"result": result, "growth": growth, "out_bytes": out_bytes}))
    """
)

DEFAULT_CAP = 8 << 30


def measure(path: Path, op: str, cap: int = DEFAULT_CAP) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), op, str(cap)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if run.returncode != 0:
        raise RuntimeError(f"measuring {op} of {path} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# name -> (groups, expected inspect result, expected decode result); results are "ok" or the
# start of the FormatError message.
BLOBS: dict[str, tuple[Callable[[], list[bc.Group]], str, str]] = {
    # The blob: 1.4 MB claiming 4096 layers x 2^18 channels (2 GiB of channel maps).
    "4096 layers x 2^18 channels x 1 token": (
        lambda: bc.layers(4096, bc.zero_group(1, 512, 512)),
        "FormatError: blob describes more metadata",
        "FormatError: blob describes more metadata",
    ),
    "4096 layers x 1024 channels x 1 token": (
        lambda: bc.layers(4096, bc.zero_group(1, 8, 128)),
        "ok",
        "ok",
    ),
    "2^24 tokens x 1 channel": (lambda: bc.layers(1, bc.zero_group(1 << 24, 1, 1)), "ok", "ok"),
    "2^16 tokens x 2^16 channels (16 GiB out)": (
        lambda: bc.layers(1, bc.zero_group(1 << 16, 256, 256)),
        "ok",
        "FormatError: blob decodes to",
    ),
    "512 layers x 255 tables": (
        lambda: bc.layers(512, bc.zero_group(1, 1, 255, tables=255)),
        "FormatError: blob describes more metadata",
        "FormatError: blob describes more metadata",
    ),
    "1 layer x 2^18 channels x 255 tables": (
        lambda: bc.layers(1, bc.zero_group(1, 512, 512, tables=255)),
        "ok",
        "ok",
    ),
    "16384 one-token segments": (
        lambda: bc.layers(1, bc.zero_group(8192, 1, 1, seg_tokens=1)),
        "ok",
        "ok",
    ),
    "512 raw rows x 1024 channels": (
        lambda: bc.layers(1, bc.zero_group(512, 8, 128, raw_rows=512)),
        "ok",
        "ok",
    ),
}
