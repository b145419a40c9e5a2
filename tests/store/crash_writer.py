"""Writer process for test_crash.py: saves contexts slowly, announcing each put on stdout, so
the test can SIGKILL it at a chosen put."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import cachegen.store
from cachegen.context import save_context


def main() -> None:
    url, options, plan = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    store = cachegen.store.open(url, **options)
    put = store._put

    def announced_put(key: str, data: bytes) -> None:
        print(key, flush=True)
        time.sleep(0.01)
        put(key, data)

    store._put = announced_put  # type: ignore[method-assign]
    for seed, n, levels in plan:
        rng = np.random.default_rng(seed)
        kv = rng.normal(size=(2, 2, n, 2, 16)).astype(np.float32)
        ids = rng.integers(0, 49152, size=n)
        save_context(store, "m", ids, kv, levels=levels, chunk_tokens=128)
    print("done", flush=True)


if __name__ == "__main__":
    main()
