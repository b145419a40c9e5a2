"""Bandwidth estimator: cold start, sudden drops, recovery."""

from __future__ import annotations

import pytest

from cachegen.stream import BandwidthEstimator

MB = 1_000_000


def feed(est: BandwidthEstimator, *rates: float) -> None:
    for r in rates:
        est.add(MB, MB / r)


def test_unknown_until_first_sample_unless_prior() -> None:
    assert BandwidthEstimator().bps is None
    assert BandwidthEstimator(prior_bps=5e6).bps == 5e6


def test_single_sample_is_the_estimate() -> None:
    est = BandwidthEstimator(prior_bps=1.0)
    feed(est, 10e6)
    assert est.bps == pytest.approx(10e6)


def test_slow_first_request_forgotten_at_once() -> None:
    est = BandwidthEstimator()
    feed(est, 1e6, 100e6)  # connection set-up made the first request 100x slower
    assert est.bps == pytest.approx(100e6)
    feed(est, 100e6, 100e6)
    assert est.bps == pytest.approx(100e6)


def test_sudden_drop_is_believed_within_one_sample() -> None:
    est = BandwidthEstimator()
    feed(est, 100e6, 100e6, 100e6, 100e6)
    feed(est, 10e6)
    assert est.bps == pytest.approx(10e6)
    feed(est, 10e6, 10e6)
    assert est.bps < 20e6


def test_noise_is_averaged_harmonically() -> None:
    est = BandwidthEstimator()
    feed(est, 1e6, 100e6, 50e6)  # the first (cold) sample is left out
    assert est.bps == pytest.approx(2 / (1 / 100e6 + 1 / 50e6))


def test_recovers_after_a_drop() -> None:
    est = BandwidthEstimator(window=5)
    feed(est, 10e6, 10e6, 10e6, 100e6, 100e6, 100e6, 100e6, 100e6)
    assert est.bps == pytest.approx(100e6)


def test_one_estimator_per_store_kept_across_loads_and_processes(tmp_path, monkeypatch) -> None:
    from cachegen.store import FileStore
    from cachegen.stream import estimator_for, save_estimate
    from cachegen.stream.estimator import bandwidth_file, forget_estimates

    monkeypatch.setenv("CACHEGEN_COSTS", str(tmp_path / "costs.json"))
    store, other = FileStore(tmp_path / "a"), FileStore(tmp_path / "b")
    est = estimator_for(store)
    assert estimator_for(FileStore(tmp_path / "a")) is est  # same URL, same link
    assert estimator_for(other) is not est
    feed(est, 1e6, 40e6, 60e6)
    save_estimate(store)
    assert bandwidth_file().parent == tmp_path
    assert str(tmp_path) not in bandwidth_file().read_text()  # URLs are not written out
    forget_estimates()  # as a new process would start
    restored = estimator_for(store)
    assert restored is not est and restored.bps == pytest.approx(est.bps)
    restored.begin_load()
    feed(restored, 1e6)  # a new load's first (cold) sample does not drag the estimate down
    assert restored.bps == pytest.approx(est.bps)
    assert estimator_for(other).bps is None
