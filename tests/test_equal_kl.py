"""Bits at equal KL (`bench/lib/equal_kl.py`): where the ladder and transform reports read a
rate-quality curve at a KL target."""

from __future__ import annotations

import math

import pytest

from lib.equal_kl import bits_at, reference_bits

# (bits/element, KL): finer settings cost more bits and give lower KL
CURVE = [(1.0, 0.1), (2.0, 0.01), (3.0, 0.001)]


def test_interpolates_log_kl_between_points() -> None:
    assert reference_bits(CURVE, 0.01) == pytest.approx(2.0)
    assert reference_bits(CURVE, math.sqrt(0.1 * 0.01)) == pytest.approx(1.5)
    assert reference_bits(CURVE, 0.002) == pytest.approx(2.0 + math.log10(5))


def test_no_value_outside_the_curve() -> None:
    assert reference_bits(CURVE, 0.5) is None
    assert reference_bits(CURVE, 1e-4) is None
    assert reference_bits(CURVE[:1], 0.1) is None


def test_a_curve_not_monotone_in_kl_is_read_at_its_first_crossing() -> None:
    bumpy = [(1.0, 0.1), (2.0, 0.004), (2.5, 0.006), (3.0, 0.001)]
    assert reference_bits(bumpy, 0.005) == pytest.approx(1.0 + math.log(20) / math.log(25))


def test_bits_at_bounds_a_curve_already_below_the_target() -> None:
    assert bits_at(CURVE, 0.2) == (1.0, "<= ")
    assert bits_at(CURVE, 0.01) == (pytest.approx(2.0), "")
    assert bits_at(CURVE, 1e-4) == (None, "")
    assert bits_at([], 0.01) == (None, "")
