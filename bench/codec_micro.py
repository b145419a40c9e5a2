"""pytest-benchmark microbenchmarks of the codec, with torchac on the same symbols.

    pytest bench/codec_micro.py --benchmark-only                  # everything
    pytest bench/codec_micro.py --benchmark-only -k smollm2       # only the real SmolLM2 KV

Not part of the test run: they live in ``bench/`` (``testpaths`` is ``tests``), and every
benchmark is marked ``slow`` (the real cache loads SmolLM2 on the first run; later runs read
``bench/.cache/``). ``extra_info`` carries elements (or symbols) per second from the median
and the run record (``lib/runinfo.py``).
See ``codec_speed.py`` for the report script and what each case measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import cachegen
from lib import kvdata, torchac_ref
from lib.runinfo import RunInfo

pytestmark = pytest.mark.slow

CACHES: dict[str, Callable[[], np.ndarray]] = {
    "smollm2-real": kvdata.real_kv,
    "32x8x128-synthetic": kvdata.synthetic_kv,
}
ROUNDS = 5
#: Where the numbers were taken, in every benchmark's extra_info (as the report scripts write it).
RUN = RunInfo.capture().as_dict()


@pytest.fixture(scope="module", params=list(CACHES))
def cache(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, bytes]:
    """(name, fp16 KV, its blob at the default level)."""
    kv = CACHES[request.param]()
    return request.param, kv, cachegen.encode(kv)


@pytest.fixture(scope="module")
def torchac_case(cache: tuple[str, np.ndarray, bytes]) -> torchac_ref.TorchacCase:
    """torchac's subset of the cache's symbols, as ``codec_speed.py`` times it."""
    _, kv, _ = cache
    case, _ = torchac_ref.subset(kv, cachegen.quantize(kv))
    return case


@pytest.fixture(scope="module")
def builds() -> dict[str, Any]:
    """torchac's extension as shipped and rebuilt with -O3."""
    pytest.importorskip("torchac")
    return torchac_ref.backends()


def _measure(benchmark: Any, fn: Callable[[], Any], items: int, group: str) -> Any:
    """Time ``fn`` (1 warm-up, ``ROUNDS`` rounds) and record items/s from the median."""
    benchmark.group = group
    result = benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["items"] = items
        benchmark.extra_info["items_per_s"] = items / median
        benchmark.extra_info["gb_per_s_fp16"] = 2 * items / median / 1e9
        benchmark.extra_info["run"] = RUN
    return result


@pytest.mark.parametrize("threads", kvdata.THREADS)
def test_encode(benchmark: Any, cache: tuple[str, np.ndarray, bytes], threads: int) -> None:
    """fp16 array -> blob."""
    name, kv, blob = cache
    out = _measure(benchmark, lambda: cachegen.encode(kv, threads=threads), kv.size, name)
    assert out == blob


@pytest.mark.parametrize("threads", kvdata.THREADS)
def test_decode_out(benchmark: Any, cache: tuple[str, np.ndarray, bytes], threads: int) -> None:
    """blob -> preallocated fp16 array (``out=``)."""
    name, kv, blob = cache
    out = np.empty_like(kv)
    _measure(benchmark, lambda: cachegen.decode(blob, out=out, threads=threads), kv.size, name)
    assert np.array_equal(out, cachegen.decode(blob))


@pytest.mark.parametrize("threads", kvdata.THREADS)
def test_decode_fresh(benchmark: Any, cache: tuple[str, np.ndarray, bytes], threads: int) -> None:
    """blob -> newly allocated fp16 array."""
    name, kv, blob = cache
    out = _measure(benchmark, lambda: cachegen.decode(blob, threads=threads), kv.size, name)
    assert out.shape == kv.shape and out.dtype == kv.dtype


@pytest.mark.parametrize("op", ["encode", "decode"])
@pytest.mark.parametrize("build", ["shipped", "O3"])
def test_torchac(
    benchmark: Any,
    cache: tuple[str, np.ndarray, bytes],
    torchac_case: torchac_ref.TorchacCase,
    builds: dict[str, Any],
    build: str,
    op: str,
) -> None:
    """torchac encode or decode of the subset (per-symbol rate in extra_info); the round trip
    must return exactly the symbols."""
    backend = builds[build]
    if op == "encode":
        fn = lambda: torchac_ref.encode(backend, torchac_case)  # noqa: E731
        streams = _measure(benchmark, fn, torchac_case.count, cache[0])
        decoded = torchac_ref.decode(backend, torchac_case, streams)
    else:
        streams = torchac_ref.encode(backend, torchac_case)
        fn = lambda: torchac_ref.decode(backend, torchac_case, streams)  # noqa: E731
        decoded = _measure(benchmark, fn, torchac_case.count, cache[0])
    assert torchac_ref.matches(torchac_case, decoded)
