"""The cost model: position-aware recompute, the calibration fit, online correction, and the
calibration cache (old entries measured again)."""

from __future__ import annotations

import json

import pytest

from cachegen.stream import CostModel
from cachegen.stream.costs import CALIBRATION_POSITIONS, CALIBRATION_TOKENS


def test_recompute_grows_with_the_context_before_the_chunk() -> None:
    costs = CostModel(1e8, prefill_tps=1000.0, prefill_ctx_s=1e-7)
    early, late = costs.recompute_time(256, 0), costs.recompute_time(256, 1792)
    assert late > early
    assert late - early == pytest.approx(256 * 1e-7 * 1792)
    assert CostModel(1e8, 1000.0).recompute_time(256, 1792) == pytest.approx(0.256)


def test_fit_recovers_a_linear_prefill_cost() -> None:
    truth = CostModel(1e8, prefill_tps=600.0, prefill_ctx_s=4e-7)
    speeds = [
        CALIBRATION_TOKENS / truth.recompute_time(CALIBRATION_TOKENS, p)
        for p in CALIBRATION_POSITIONS
    ]
    fitted = CostModel.fit(1e8, CALIBRATION_POSITIONS, speeds)
    assert fitted.prefill_tps == pytest.approx(600.0, rel=1e-6)
    assert fitted.prefill_ctx_s == pytest.approx(4e-7, rel=1e-6)
    # Noise that makes the context look free never gives a negative term.
    flat = CostModel.fit(1e8, CALIBRATION_POSITIONS, [500.0, 510.0, 520.0])
    assert flat.prefill_ctx_s == 0.0


def test_online_correction_follows_a_busier_machine() -> None:
    costs = CostModel(1e8, prefill_tps=1000.0, prefill_ctx_s=2e-7)
    before = costs.recompute_time(256, 1024)
    for _ in range(4):  # every chunk takes twice what the calibration says
        costs.observe_recompute(256, 1024, 2 * before)
    assert costs.recompute_time(256, 1024) == pytest.approx(2 * before, rel=0.1)
    # Both terms scale alike: the position dependence keeps its shape.
    assert costs.prefill_ctx_s * costs.prefill_tps == pytest.approx(2e-7 * 1000.0)
    costs.observe_decode(1_000_000, 0.02)
    assert costs.decode_eps < 1e8


def test_calibration_cached_and_old_entries_measured_again(tmp_path) -> None:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"e": {"decode_eps": 1e8, "prefill_tps": 500.0}}))  # old form
    calls = []

    def measure(positions):
        calls.append(tuple(positions))
        return [800.0, 700.0, 600.0]

    costs = CostModel.calibrated("e", measure, cache_file=path)
    assert calls == [CALIBRATION_POSITIONS] and costs.prefill_ctx_s > 0
    again = CostModel.calibrated("e", measure, cache_file=path)
    assert len(calls) == 1 and again == costs
    assert CostModel.calibrated("f", lambda _: 900.0, cache_file=path).prefill_ctx_s == 0.0


def test_compute_spread_widens_the_planning_margin() -> None:
    steady, noisy = CostModel(1e8, 1000.0), CostModel(1e8, 1000.0)
    for ratio in (1.0, 1.0, 1.0, 1.0):
        steady.observe_decode(1_000_000, ratio * steady.decode_time(1_000_000))
    for ratio in (0.5, 3.0, 1.0, 4.0):
        noisy.observe_decode(1_000_000, ratio * noisy.decode_time(1_000_000))
    assert steady.planning(8) == pytest.approx(1.0)
    assert noisy.planning(8) > 1.3 and noisy.planning(32) < noisy.planning(8)


def test_a_busier_machine_moves_the_speed_not_the_margin() -> None:
    """A calibration from a machine 30x quieter: the recompute speed follows the first timing,
    and the spread counts it as at most a 3x miss, so the planning margin stays bounded
    instead of tripling every compute time of the next plans."""
    costs = CostModel(1e8, 400.0, 5e-7, compute_cv=0.3)
    before = costs.recompute_time(256, 512)
    costs.observe_recompute(256, 512, 30 * before)
    assert costs.recompute_time(256, 512) > 10 * before
    assert costs.planning(8) < 1 + 1.28 * 2.0 / 8**0.5
    assert costs.planning(8) > 1 + 1.28 * 0.3 / 8**0.5  # still wider than before the miss
