"""BD-rate / BD-PSNR (bjontegaard package, PCHIP): exact cases, edge cases and CompressAI's published check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vrtk.eval.bdrate import bd, monotone_points, msssim_db, quality_at_rate

KODAK = Path("/work/shared/data/reference-rd/kodak")
RATES = [0.13, 0.21, 0.32, 0.48, 0.67, 0.94, 1.26, 1.66]
PSNRS = [27.6, 29.2, 31.0, 32.8, 34.5, 36.7, 38.6, 40.6]


def test_curve_against_itself_is_zero():
    result = bd(RATES, PSNRS, RATES, PSNRS)
    assert result.bd_rate == pytest.approx(0.0, abs=1e-9)
    assert result.bd_quality == pytest.approx(0.0, abs=1e-9)
    assert result.overlap_quality == 1.0 and result.dropped == 0


def test_known_shifts():
    """10 % fewer bits everywhere is -10 % BD-rate; +0.5 dB everywhere is +0.5 dB BD-PSNR (exact in log rate)."""
    cheaper = bd(RATES, PSNRS, [r * 0.9 for r in RATES], PSNRS)
    assert cheaper.bd_rate == pytest.approx(-10.0, abs=1e-9)
    better = bd(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS])
    assert better.bd_quality == pytest.approx(0.5, abs=1e-9)
    assert better.bd_rate < 0
    worse = bd(RATES, PSNRS, [r * 1.25 for r in RATES], PSNRS)
    assert worse.bd_rate == pytest.approx(25.0, abs=1e-9)


def test_only_the_overlapping_range_counts():
    """A test curve covering only the upper half is compared on that half (no extrapolation)."""
    half = bd(RATES, PSNRS, [r * 0.8 for r in RATES[4:]], PSNRS[4:])
    assert half.bd_rate == pytest.approx(-20.0, abs=0.5)  # not exact: PCHIP's end slopes see fewer points
    assert 0 < half.overlap_quality < 1


def test_non_monotone_points_are_dropped_and_counted():
    rates, quality, dropped = monotone_points([0.1, 0.2, 0.3, 0.4], [30.0, 29.0, 32.0, 33.0])
    assert list(rates) == [0.1, 0.3, 0.4] and list(quality) == [30.0, 32.0, 33.0] and dropped == 1
    assert bd(RATES, PSNRS, RATES + [0.5], PSNRS + [20.0]).dropped == 1


def test_unusable_curves_give_none_with_a_reason():
    single = bd(RATES, PSNRS, [0.5], [33.0])
    assert single.bd_rate is None and "at least 2" in single.note
    apart = bd(RATES, PSNRS, [5.0, 6.0], [50.0, 51.0])
    assert apart.bd_rate is None and apart.bd_quality is None and "no overlap" in apart.note
    assert bd(RATES, PSNRS, [0.2, None, 0.5], [29.0, 30.0, None]).bd_rate is None  # missing values are ignored


def test_quality_at_rate_interpolates_inside_the_range_only():
    values = quality_at_rate(RATES, PSNRS, [RATES[2], math.sqrt(RATES[2] * RATES[3]), 0.01, 5.0])
    assert values[0] == pytest.approx(PSNRS[2])
    assert PSNRS[2] < values[1] < PSNRS[3]
    assert values[2] is None and values[3] is None


def test_msssim_db():
    assert msssim_db([0.9, 0.99, None, 1.0]) == [pytest.approx(10.0), pytest.approx(20.0), None, None]


@pytest.mark.skipif(not (KODAK / "bmshj2018-hyperprior-vbr-ans.json").is_file(),
                    reason="CompressAI's published Kodak results are not available")
def test_compressai_vbr_hyperprior_matches_the_published_figure():
    """CompressAI's variable-rate hyperprior vs its 8 fixed-rate models: about -0.01 % with PCHIP."""
    anchor = json.loads((KODAK / "compressai-bmshj2018-hyperprior_mse_cuda.json").read_text())["results"]
    test = json.loads((KODAK / "bmshj2018-hyperprior-vbr-ans.json").read_text())["results"]
    result = bd(anchor["bpp"], anchor["psnr-rgb"], test["bpp"], test["psnr-rgb"])
    assert result.bd_rate == pytest.approx(-0.01, abs=0.005)
    assert result.dropped == 0
    assert abs(result.bd_quality) < 0.01
