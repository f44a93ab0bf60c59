"""BD numbers over a sliver of overlap are flagged and kept out of the summary; the RD plot gives every curve its
own style and puts one-point results apart."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from PIL import Image

from vrtk.eval.bdrate import MIN_OVERLAP, bd
from vrtk.eval.report import curve_styles, zoom_box
from vrtk.eval.results import Curve

WIDE_RATES = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
WIDE_PSNRS = [26.0, 29.0, 32.0, 35.0, 38.0, 41.0]


def test_overlap_decides_reliability():
    inside = bd(WIDE_RATES, WIDE_PSNRS, [0.15, 0.3, 0.6, 1.2, 2.4], [27.0, 30.0, 33.0, 36.0, 39.0])  # 12 of 15 dB
    assert inside.overlap_quality == pytest.approx(0.8)
    assert inside.rate_reliable and inside.quality_interval == pytest.approx((27.0, 39.0))
    sliver = bd(WIDE_RATES, WIDE_PSNRS, [0.15, 0.2, 0.3], [27.0, 28.0, 29.0])  # 2 of 15 dB
    assert sliver.bd_rate is not None and sliver.overlap_quality < MIN_OVERLAP and not sliver.rate_reliable
    assert sliver.quality_interval == pytest.approx((27.0, 29.0))
    assert sliver.rate_interval == pytest.approx((0.15, 0.3))
    assert not bd(WIDE_RATES, WIDE_PSNRS, [0.5], [33.0]).rate_reliable  # no BD-rate at all: never reliable


def write_results(path, name, rates, psnrs):
    path.write_text(json.dumps({"name": name, "results": {"bpp": rates, "psnr-rgb": psnrs}}))
    return str(path)


def test_report_flags_slivers_and_summarises_only_sound_comparisons(tmp_path):
    files = [write_results(tmp_path / "anchor.json", "anchor", WIDE_RATES, WIDE_PSNRS),
             write_results(tmp_path / "broad.json", "broad", [0.09, 0.18, 0.36, 0.72, 1.44], [26, 29, 32, 35, 38]),
             write_results(tmp_path / "sliver.json", "sliver", [0.12, 0.16, 0.2], [27.0, 28.0, 29.0])]
    code, out, err = run_cli("report", *files, "-o", str(tmp_path / "r"), "--anchor", "anchor")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = {r["curve"]: r for r in summary["bd"]}
    assert rows["broad"]["reliable_bd_rate_psnr"] and rows["broad"]["overlap_psnr"] == pytest.approx(0.8)
    assert not rows["sliver"]["reliable_bd_rate_psnr"] and rows["sliver"]["bd_rate_psnr"] < 0
    assert [r["curve"] for r in summary["bd_summary"]["reliable"]] == ["broad"]
    assert [r["curve"] for r in summary["bd_summary"]["unreliable"]] == ["sliver"]
    md = (tmp_path / "r" / "report.md").read_text()
    bd_section = md.split("## BD-rate against anchor")[1].splitlines()
    sliver_row = next(line for line in bd_section if line.startswith("| sliver |"))
    broad_row = next(line for line in bd_section if line.startswith("| broad |"))
    assert "†" in sliver_row and "†" not in broad_row
    summary_text = md.split("**Summary against anchor**")[1].split("## ")[0]
    assert "- broad:" in summary_text and "- sliver" not in summary_text
    assert "Left out (PSNR overlap below 50 %): sliver (13 %" in summary_text
    printed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert printed["sliver"].count("†") == 2 and "†" not in printed["broad"]


def curve(label, kind, n):
    return Curve(label, kind, bpp=[0.2 + 0.1 * i for i in range(n)], psnr=[28.0 + i for i in range(n)])


def test_every_line_and_every_point_gets_its_own_style():
    kinds = ["classical", "classical", "fixed", "variable", "variable", "reference", "external"] * 4
    curves = [curve(f"c{i}", kind, 3) for i, kind in enumerate(kinds)] + [curve(f"p{i}", "fixed", 1)
                                                                         for i in range(14)]
    styles = curve_styles(curves)
    lines = [(s["color"], str(s["linestyle"])) for c, s in zip(curves, styles, strict=True) if len(c) > 1]
    points = [(s["color"], s["marker"]) for c, s in zip(curves, styles, strict=True) if len(c) == 1]
    assert len(set(lines)) == len(lines) == 28
    assert len(set(points)) == len(points) == 14
    assert all(s["linestyle"] == "none" for c, s in zip(curves, styles, strict=True) if len(c) == 1)
    first = dict(zip([c.label for c in curves], styles, strict=True))
    assert first["c0"]["linestyle"] == "--" and first["c2"]["linestyle"] == "-." and first["c5"]["linestyle"] == ":"


def test_one_point_results_get_a_zoom_panel(tmp_path):
    anchor = Curve("JPEG", "classical", bpp=WIDE_RATES, psnr=WIDE_PSNRS)
    ours = [Curve("fixed", "fixed", bpp=[0.2, 0.3, 0.4], psnr=[28.0, 29.0, 29.6]),
            Curve("ecg variant", "fixed", bpp=[0.25], psnr=[27.5])]
    (x0, x1), (y0, y1) = zoom_box([anchor, *ours], "psnr")
    assert x0 < 0.2 and 0.4 < x1 < 1.0 and y0 < 27.5 and 29.6 < y1 < 32
    assert zoom_box(ours[:1], "psnr") is None  # nothing else on the plot: one panel shows it all
    files = [write_results(tmp_path / "jpeg.json", "JPEG", WIDE_RATES, WIDE_PSNRS),
             write_results(tmp_path / "fixed.json", "fixed", [0.2, 0.3, 0.4], [28.0, 29.0, 29.6]),
             write_results(tmp_path / "single.json", "one point", [0.25], [27.5])]
    code, _, err = run_cli("report", *files, "-o", str(tmp_path / "two"))
    assert code == 0, err
    code, _, err = run_cli("report", files[1], "-o", str(tmp_path / "one"))
    assert code == 0, err
    with Image.open(tmp_path / "two" / "rd-psnr.png") as two, Image.open(tmp_path / "one" / "rd-psnr.png") as one:
        assert two.size[0] > 1.5 * one.size[0]  # two panels side by side
