"""BD-rate and BD-PSNR with the ``bjontegaard`` package (PCHIP, over the overlapping range only).

PCHIP needs strictly increasing abscissae, and undertrained or sparse models sometimes give a point that is
worse than a cheaper one; such points are left out (and counted) rather than letting the interpolation fold.
Results are None with a reason when the curves cannot be compared (too few points, no overlap).

Reliability: BD-rate averages the log-rate gap over the quality interval both curves cover, BD-PSNR the quality
gap over the shared log-rate interval. When that interval is a sliver of the joint range (a CPU-trained model
spanning 27-30 dB against WebP spanning 28-42 dB shares 9 % of it) the number describes one end of one curve and
says little about the codecs, so a result whose overlap is below :data:`MIN_OVERLAP` of the joint range is
flagged unreliable: reports show it, marked, and leave it out of their summary. Half the joint range is our
choice: the bjontegaard package warns below 75 %, which would flag any comparison of a narrow curve with a wide
one; below half, most of at least one curve lies outside the comparison. A BD-rate cannot be moved onto the rate
axis without extrapolating one curve (the rate gap at a given quality exists only where both curves reach that
quality); the comparison over the shared rate range is BD-PSNR, flagged by its own (rate) overlap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

METHOD = "pchip"
MIN_OVERLAP = 0.5  # share of the joint range below which a BD number is flagged unreliable (see above)


@dataclass
class BDResult:
    bd_rate: float | None  # percent; negative = fewer bits than the anchor at equal quality
    bd_quality: float | None  # dB (PSNR, or MS-SSIM in dB); positive = better than the anchor at equal rate
    overlap_quality: float  # fraction of the joint quality range both curves cover (BD-rate integrates there)
    overlap_rate: float  # fraction of the joint log-rate range both curves cover (BD-PSNR integrates there)
    dropped: int  # non-monotone points left out (both curves)
    note: str = ""
    quality_interval: tuple[float, float] | None = None  # where BD-rate integrates (quality units)
    rate_interval: tuple[float, float] | None = None  # where BD-quality integrates (bpp)

    @property
    def rate_reliable(self) -> bool:
        """BD-rate exists and integrates over at least MIN_OVERLAP of the joint quality range."""
        return self.bd_rate is not None and bool(self.overlap_quality >= MIN_OVERLAP)

    @property
    def quality_reliable(self) -> bool:
        """BD-quality exists and integrates over at least MIN_OVERLAP of the joint log-rate range."""
        return self.bd_quality is not None and bool(self.overlap_rate >= MIN_OVERLAP)


def monotone_points(rate, quality) -> tuple[np.ndarray, np.ndarray, int]:
    """Finite points sorted by rate, keeping only those better than every cheaper point kept before them."""
    pairs = sorted((float(r), float(q)) for r, q in zip(rate, quality, strict=True)
                   if r is not None and q is not None and math.isfinite(float(r)) and math.isfinite(float(q))
                   and float(r) > 0)
    kept: list[tuple[float, float]] = []
    for r, q in pairs:
        if not kept or (r > kept[-1][0] and q > kept[-1][1]):
            kept.append((r, q))
    rates = np.array([p[0] for p in kept])
    qualities = np.array([p[1] for p in kept])
    return rates, qualities, len(pairs) - len(kept)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the joint range [min, max] of both that both cover (what the bjontegaard package integrates over)."""
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    total = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(hi - lo, 0.0) / total if total > 0 else 1.0


def shared_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    return (float(lo), float(hi)) if hi > lo else None


def bd(rate_anchor, quality_anchor, rate_test, quality_test) -> BDResult:
    """BD-rate (%) and BD-quality of test against anchor; quality is PSNR in dB or any 'higher is better' score."""
    import bjontegaard

    ra, qa, da = monotone_points(rate_anchor, quality_anchor)
    rt, qt, dt = monotone_points(rate_test, quality_test)
    dropped = da + dt
    if len(ra) < 2 or len(rt) < 2:
        return BDResult(None, None, 0.0, 0.0, dropped, "needs at least 2 increasing points on each curve")
    ov_q = float(overlap(qa, qt))
    ov_r = float(overlap(np.log10(ra), np.log10(rt)))
    rate = quality = None
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns on small overlaps; we report the overlap instead
        if ov_q > 0:
            rate = float(bjontegaard.bd_rate(ra, qa, rt, qt, method=METHOD, require_matching_points=False,
                                             min_overlap=0))
        else:
            notes.append("no overlap in quality")
        if ov_r > 0:
            quality = float(bjontegaard.bd_psnr(ra, qa, rt, qt, method=METHOD, require_matching_points=False,
                                                min_overlap=0))
        else:
            notes.append("no overlap in rate")
    return BDResult(rate, quality, ov_q, ov_r, dropped, "; ".join(notes), shared_interval(qa, qt),
                    shared_interval(ra, rt))


def msssim_db(values) -> list[float | None]:
    """MS-SSIM as -10 log10(1 - m), the scale CompressAI plots and on which BD numbers are usually given."""
    out = []
    for v in values:
        out.append(-10 * math.log10(1 - v) if v is not None and 0 <= v < 1 else None)
    return out


def quality_at_rate(rate_anchor, quality_anchor, rates) -> list[float | None]:
    """The anchor's quality interpolated (PCHIP in log rate) at each of ``rates``; None outside its range."""
    from scipy.interpolate import PchipInterpolator

    ra, qa, _ = monotone_points(rate_anchor, quality_anchor)
    if len(ra) < 2:
        return [None for _ in rates]
    f = PchipInterpolator(np.log10(ra), qa)
    out = []
    for r in rates:
        if r is None or not (ra[0] <= r <= ra[-1]):
            out.append(None)
        else:
            out.append(float(f(np.log10(r))))
    return out
