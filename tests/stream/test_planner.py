"""Planner branches: best quality within the SLO, fastest when nothing fits, mixing text with
KV, missing levels, and the measured-quality record."""

from __future__ import annotations

import numpy as np
import pytest

from cachegen.stream import TEXT, ConstantLink, OptionTable, Planner
from cachegen.stream.planner import candidate_plans, evaluate, level_kl

MB = 1_000_000


def table(chunks: int, recompute_s: float, sizes=(1 * MB, 2 * MB, 4 * MB)) -> OptionTable:
    """Levels 1..3 of the given sizes (decode 10 ms) and text; 256 tokens a chunk."""
    choices = (1, 2, 3, TEXT)
    kl = [0.1, 0.01, 0.001, 0.0]
    nbytes = np.tile([*sizes, 0], (chunks, 1)).astype(float)
    requests = np.tile([1, 1, 1, 0], (chunks, 1)).astype(float)
    compute = np.tile([0.01, 0.01, 0.01, recompute_s], (chunks, 1))
    loss = np.tile(kl, (chunks, 1)) * 256
    return OptionTable(choices, nbytes, requests, compute, loss, np.full(chunks, 256))


def test_best_level_that_fits() -> None:
    # 10 chunks at 100 MB/s: level 3 takes 0.41 s, level 2 0.21 s, level 1 0.11 s.
    t = table(10, recompute_s=10.0)
    link = ConstantLink(100 * MB)
    assert Planner(1.0).choose(t, 0, 0, link).choice == 3
    assert Planner(0.3).choose(t, 0, 0, link).choice in (2, 3)  # a 2/3 mix may fit
    d = Planner(0.15).choose(t, 0, 0, link)
    assert d.choice in (1, 2) and d.feasible


def test_nothing_fits_means_fastest() -> None:
    t = table(10, recompute_s=10.0)
    d = Planner(0.01).choose(t, 0, 0, ConstantLink(100 * MB))
    assert d.choice == 1 and not d.feasible
    assert d.finish == pytest.approx(10 * 0.01 + 0.01, rel=0.01)


def test_text_when_the_link_is_slow() -> None:
    t = table(4, recompute_s=0.05)
    d = Planner(0.5).choose(t, 0, 0, ConstantLink(1 * MB))  # level 1 needs 1 s a chunk
    assert d.choice == TEXT and d.feasible


def test_text_is_lossless_so_preferred_when_it_fits() -> None:
    t = table(4, recompute_s=0.05)
    assert Planner(10.0).choose(t, 0, 0, ConstantLink(1000 * MB)).choice == TEXT


def test_mixing_text_and_kv_beats_either_alone() -> None:
    # Level 1 takes 0.1 s to fetch, text 0.1 s to recompute: alternating overlaps them.
    t = table(8, recompute_s=0.1, sizes=(1 * MB, 8 * MB, 16 * MB))
    link = ConstantLink(10 * MB)
    plans = candidate_plans(8, 4)
    finish, _ = evaluate(plans, t, 0, 0, link)
    uniform = [finish[(plans == c).all(axis=1)][0] for c in range(4)]
    assert finish.min() < 0.7 * min(uniform)
    d = Planner(0.6).choose(t, 0, 0, link)
    assert d.feasible and d.finish <= 0.6


def test_remaining_budget_counts_time_spent() -> None:
    t = table(5, recompute_s=10.0)
    link = ConstantLink(100 * MB)
    fresh = Planner(1.0).choose(t, 0, 0, link)
    assert fresh.choice == 3 and fresh.loss == pytest.approx(5 * 0.256)
    # 0.85 s already gone: the plan must give up quality on some chunks to fit.
    late = Planner(1.0).choose(t, 0.85, 0.85, link)
    assert late.feasible and late.finish <= 1.0 and late.loss > fresh.loss


def test_missing_level_is_never_chosen() -> None:
    t = table(3, recompute_s=10.0)
    t.nbytes[0, 2] = np.inf
    t.loss[0, 2] = np.inf
    assert Planner(10.0).choose(t, 0, 0, ConstantLink(100 * MB)).choice == 2


def test_candidate_plans_cover_uniform_and_mixes() -> None:
    plans = candidate_plans(10, 3)
    for o in range(3):
        assert ((plans == o).all(axis=1)).any()
    shares = {int((p == 0).sum()) for p in plans if set(p) == {0, 1}}
    assert shares >= {1, 5, 9}
    assert candidate_plans(0, 3).shape == (1, 0)


def test_level_kl_from_quality_record_or_nominal() -> None:
    assert level_kl({"kl": {"1": 0.2, "3": 0.01}}, [1, 3]) == {1: 0.2, 3: 0.01}
    nominal = level_kl(None, [1, 3, 5])
    assert nominal[1] > nominal[3] > nominal[5]
    assert level_kl({"kl": {"1": "x"}}, [1]) == level_kl(None, [1])
