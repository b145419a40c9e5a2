"""Bandwidth estimator: cold start, sudden drops, recovery, expiry, persistence."""

from __future__ import annotations

import json
import time

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


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_samples_expire_back_to_the_prior() -> None:
    clock = Clock()
    est = BandwidthEstimator(prior_bps=50e6, max_age_s=60.0, clock=clock)
    feed(est, 1e6, 1e6, 1e6)  # a stalled period
    assert est.bps == pytest.approx(1e6)
    clock.now += 30
    feed(est, 2e6)
    clock.now += 40  # the first samples are 70 s old, the last 40 s
    assert est.bps == pytest.approx(2e6)
    clock.now += 30
    assert est.bps == 50e6  # nothing live: the prior again
    unknown = BandwidthEstimator(max_age_s=60.0, clock=clock)
    feed(unknown, 1e6, 1e6)
    clock.now += 61
    assert unknown.bps is None  # unknown again: the planners probe


def test_a_load_of_one_transfer_counts_once_it_ends() -> None:
    est = BandwidthEstimator()
    feed(est, 1e6, 1e6, 1e6)  # earlier loads: 1 MB/s
    est.begin_load()
    feed(est, 0.5e6)  # slower than the estimate: maybe a connection set-up, left out
    assert est.bps == pytest.approx(1e6)
    est.end_load()  # ... unless it is the load's only measurement
    assert est.bps < 1e6
    est.begin_load()
    feed(est, 0.1e6, 0.8e6)  # a cold first sample among several is left out for good
    est.end_load()
    assert est.bps == pytest.approx(4 / (2 / 1e6 + 1 / 0.5e6 + 1 / 0.8e6))
    assert 0.1e6 not in [r for _, r in est.samples()]


def test_first_sample_faster_than_the_estimate_counts_at_once() -> None:
    est = BandwidthEstimator()
    feed(est, 100e6, 100e6, 100e6, 100e6)
    feed(est, 0.3e6)  # one stalled transfer: believed at once
    assert est.bps == pytest.approx(0.3e6)
    est.begin_load()
    feed(est, 80e6)  # the next load's first transfer (a probe) shows the link is back
    assert est.bps > 1e6


def test_saved_samples_keep_their_times(tmp_path, monkeypatch) -> None:
    from cachegen.store import FileStore
    from cachegen.stream import estimator_for, save_estimate
    from cachegen.stream.estimator import _store_key, bandwidth_file, forget_estimates

    monkeypatch.setenv("CACHEGEN_COSTS", str(tmp_path / "costs.json"))
    store = FileStore(tmp_path / "a")
    feed(estimator_for(store), 1e6, 40e6, 60e6)
    save_estimate(store)
    key = _store_key(store)
    entry = json.loads(bandwidth_file().read_text())[key]
    assert len(entry["times"]) == len(entry["rates"]) == 2
    # An hour later (and a file from before samples had times: dated by "saved"), a new
    # process finds the link unknown, not as measured then.
    old = time.time() - 3600
    bandwidth_file().write_text(json.dumps({key: {"rates": entry["rates"], "saved": old}}))
    forget_estimates()
    assert estimator_for(store).bps is None
    bandwidth_file().write_text(json.dumps({key: {"rates": [1e6], "times": ["x"], "saved": 1}}))
    forget_estimates()
    assert estimator_for(store).bps is None  # a damaged entry: measured afresh
    forget_estimates()


def test_a_probe_that_beats_the_estimate_replaces_it() -> None:
    est = BandwidthEstimator()
    feed(est, 100e6, 100e6, 100e6, 100e6, 0.3e6)  # one stall: the planners stop fetching
    est.begin_load()
    est.add(MB, MB / 80e6, probe=True)
    assert est.bps == pytest.approx(80e6)  # not a harmonic mean still dragged by the stall
    est.add(MB, MB / 0.1e6, probe=True)  # a probe slower than the estimate is a sample
    assert est.bps < 0.3e6
