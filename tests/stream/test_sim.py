"""The trace-driven simulator: trace arithmetic, and the controller against the baselines on
bandwidth traces (steady, dropping, noisy)."""

from __future__ import annotations

import numpy as np
import pytest

from cachegen.stream import TEXT, OptionTable
from cachegen.stream.sim import Trace, cachegen_rule, fixed, oracle, ours, select, simulate

MB = 1_000_000


def context(chunks: int = 16, recompute_s: float = 0.2) -> OptionTable:
    """Levels 1/3/5 of 0.5/1/2 MB (KL 0.05/0.01/0.002), int8 of 4 MB, and text."""
    choices = (1, 3, 5, "int8", TEXT)
    row = np.array([0.5, 1.0, 2.0, 4.0, 0]) * MB
    kl = np.array([0.05, 0.01, 0.002, 0.004, 0.0])
    return OptionTable(
        choices,
        np.tile(row, (chunks, 1)),
        np.tile([1, 1, 1, 1, 0], (chunks, 1)).astype(float),
        np.tile([0.01, 0.01, 0.01, 0.002, recompute_s], (chunks, 1)),
        np.tile(kl * 256, (chunks, 1)),
        np.full(chunks, 256),
    )


def test_trace_transfer_times() -> None:
    flat = Trace.constant(10 * MB, latency=0.01)
    assert float(flat.finish(np.array(1.0), np.array(5 * MB), np.array(1.0))) == pytest.approx(1.51)
    step = Trace(np.array([0.0, 1.0]), np.array([10 * MB, 1 * MB]))
    # 10 MB by t=1, then 1 MB/s: 12 MB starting at 0.5 ends at 1 + 7 = 8 s.
    assert float(step.finish(np.array(0.5), np.array(12 * MB), np.array(1.0))) == pytest.approx(8)
    assert float(step.finish(np.array(3.0), np.array(0.0), np.array(0.0))) == 3.0


def test_fixed_plans_add_up() -> None:
    t = context(4)
    r = simulate(t, Trace.constant(10 * MB), fixed(5), slo_s=10)
    # fetches of 0.2 s back to back, the last decode after the last fetch.
    assert r.ttft == pytest.approx(0.81) and r.nbytes == 8 * MB and r.met
    assert r.mean_kl == pytest.approx(0.002)
    text = simulate(t, Trace.constant(10 * MB), fixed(TEXT), slo_s=0.5)
    assert text.ttft == pytest.approx(0.8) and text.nbytes == 0 and not text.met


@pytest.mark.parametrize("slo", [0.1, 0.3, 0.5, 1.0, 2.0])
def test_steady_link_ours_meets_slo_with_rule_quality_and_oracle_speed(slo: float) -> None:
    t = select(context(), (1, 3, 5, TEXT))
    trace = Trace.constant(20 * MB)
    best = oracle(t, trace, slo)
    mine = simulate(t, trace, ours(slo), slo)
    rule = simulate(t, trace, cachegen_rule(slo, len(t)), slo)
    if best.met:  # ours meets it too, at no worse quality than the rule where that meets it
        assert mine.met
        if rule.met:
            assert mine.mean_kl <= rule.mean_kl
    else:  # nothing meets it: ours is about as fast as the fastest plan
        assert mine.ttft <= 1.15 * best.ttft


def test_drop_changes_the_next_choice() -> None:
    """10x drop at 0.3 s: the first chunk fetched slowly already lowers the next choice."""
    t = select(context(), (1, 3, 5, TEXT))
    trace = Trace(np.array([0.0, 0.3]), np.array([40 * MB, 4 * MB]))
    seen: list[tuple[float, float, object]] = []
    policy = ours(1.0)

    def watch(step):
        choice = policy(step)
        seen.append((step.now, step.estimator.bps or 0.0, choice))
        return choice

    simulate(t, trace, watch, 1.0)
    slow = next(i for i, (now, _, _) in enumerate(seen) if now > 0.3)
    assert seen[slow][1] < 0.5 * seen[slow - 1][1]  # the estimate fell by the next decision
    assert seen[slow - 1][2] == 5 and seen[slow][2] != 5


def test_noisy_links_ours_meets_slo_where_it_can() -> None:
    t = select(context(), (1, 3, 5, TEXT))
    met = feasible = rule_met = 0
    for seed in range(8):
        rates = np.random.default_rng(seed).lognormal(np.log(15 * MB), 0.4, 200)
        trace = Trace(np.arange(0, 10, 0.05), rates)
        for slo in (0.5, 1.0, 2.0):
            if oracle(t, trace, slo).met:
                feasible += 1
                met += simulate(t, trace, ours(slo), slo).met
                rule_met += simulate(t, trace, cachegen_rule(slo, len(t)), slo).met
    assert met >= 0.8 * feasible and met >= rule_met


def test_oracle_is_the_best_plan_in_hindsight() -> None:
    t = select(context(8), (1, 3, 5, TEXT))
    trace = Trace.constant(10 * MB)
    best = oracle(t, trace, slo_s=0.8)
    assert best.met and best.ttft <= 0.8
    meeting = [r for c in t.choices if (r := simulate(t, trace, fixed(c), 0.8)).met]
    assert meeting and all(r.loss >= best.loss for r in meeting)
    fastest = oracle(t, trace, slo_s=0.01)
    assert not fastest.met
    assert fastest.ttft <= min(simulate(t, trace, fixed(c), 1).ttft for c in t.choices)
