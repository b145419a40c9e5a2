"""Peak RSS growth of inspect / decode / entropy_stats for every crafted blob of
tests/test_hostile_memory.py (a fresh process per call), as a markdown table.

    PYTHONPATH=python:tests/support python bench/hostile_memory.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import blobcraft as bc
import memory_probe as probe

from lib.runinfo import RunInfo


def main() -> None:
    print(RunInfo.capture().line(), "\n")
    print("| blob | bytes | call | result | output bytes | growth MiB | bound MiB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    root = Path(tempfile.mkdtemp())
    for i, (name, (groups, _, _)) in enumerate(probe.BLOBS.items()):
        path = root / f"{i}.cgkv"
        path.write_bytes(bc.blob(groups()))
        size = path.stat().st_size
        for op in ("inspect", "decode") + (("stats",) if "255 tables" in name else ()):
            m = probe.measure(path, op)
            bound = probe.C * (size + m["out_bytes"]) + probe.FIXED
            ratio = m["growth"] / (size + m["out_bytes"])
            print(
                f"| {name} | {size} | {op} | {m['result'][:45]} | {m['out_bytes']} "
                f"| {m['growth'] / 2**20:.1f} | {bound / 2**20:.0f} | {ratio:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
