"""KL targets: the level expected to meet a quality, from a table of measured levels."""

from __future__ import annotations

import math

import pytest

import cachegen
from cachegen.targets import LEVEL_KL, expected_kl, level_for_kl

TABLE = {5: 0.04, 15: 0.004, 25: 0.0004}


def test_measured_levels_read_back_and_between_them_log_kl_is_linear() -> None:
    assert expected_kl(15, TABLE) == pytest.approx(0.004)
    assert expected_kl(10, TABLE) == pytest.approx(math.sqrt(0.04 * 0.004))
    assert expected_kl(40, TABLE) == pytest.approx(0.0004)  # finer: at most the finest's
    assert expected_kl(4, TABLE) == math.inf  # coarser than anything measured: unknown
    assert expected_kl(cachegen.LOSSLESS, TABLE) == 0.0


def test_the_smallest_level_meeting_the_target() -> None:
    assert level_for_kl(0.04, TABLE) == 5
    assert level_for_kl(0.039, TABLE) == 6
    assert level_for_kl(0.004, TABLE) == 15
    assert level_for_kl(1e-5, TABLE) == cachegen.LOSSLESS  # no level is expected to
    assert level_for_kl(0.0, TABLE) == cachegen.LOSSLESS


def test_the_shipped_table_falls_with_the_level_and_reaches_near_lossless() -> None:
    kls = [expected_kl(lv) for lv in cachegen.LEVELS]
    assert all(b <= a for a, b in zip(kls, kls[1:], strict=False))
    assert level_for_kl(0.05) < level_for_kl(0.01) < level_for_kl(0.002) <= max(cachegen.LEVELS)
    assert min(LEVEL_KL) == min(cachegen.LEVELS) and max(LEVEL_KL) == max(cachegen.LEVELS)


@pytest.mark.parametrize("target", [-0.1, math.nan, math.inf])
def test_a_target_must_be_a_finite_kl(target: float) -> None:
    with pytest.raises(ValueError, match="KL target"):
        level_for_kl(target, TABLE)


@pytest.mark.parametrize("table", [{}, {5: 0.0}, {5: math.nan}, {5: -1.0}])
def test_a_table_needs_a_measured_kl(table: dict[int, float]) -> None:
    with pytest.raises(ValueError, match="KL table"):
        expected_kl(5, table)


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level must be"):
        expected_kl(0, TABLE)
