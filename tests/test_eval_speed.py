"""Cheap quality measurement: vrtk's MS-SSIM equals pytorch_msssim's, is measured once per decoded image, and
``vrtk eval --metrics psnr`` skips it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image
from pytorch_msssim import ms_ssim as reference_ms_ssim

from vrtk.data import synthetic_images
from vrtk.errors import VrtkError
from vrtk.eval.classical import decode, encode, evaluate_classical
from vrtk.eval.evaluate import EvalImage
from vrtk.eval.measure import MS_SSIM_MIN_SIDE, QualityMeter, halve, ms_ssim, parse_metrics, quality, to_8bit
from vrtk.images import to_pil

TOLERANCE = 1e-4  # the bound; on Kodak the largest difference is ~2.5e-5


def structured(height: int, width: int) -> torch.Tensor:
    """Gradients, a checkerboard of sharp edges and a flat patch: what natural images have and noise lacks."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    checks = ((xs * 12).floor() + (ys * 9).floor()) % 2
    flat = torch.where((xs < 0.3) & (ys < 0.3), torch.full_like(xs, 0.5), xs * ys)
    return to_8bit(torch.stack([xs, checks, flat])[None])


@pytest.mark.parametrize("size", [(161, 161), (173, 240), (256, 191)])  # odd sides exercise the padded pooling
@pytest.mark.parametrize("noise", [0.01, 0.2])
def test_ms_ssim_matches_pytorch_msssim_on_random_images(size, noise):
    gen = torch.Generator().manual_seed(hash((size, noise)) % 2**31)
    x = torch.rand(2, 3, *size, generator=gen)
    y = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    expected = reference_ms_ssim(x, y, data_range=1.0, size_average=False)
    got = ms_ssim(x, y)
    assert got.shape == (2,)
    assert torch.allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_ms_ssim_matches_pytorch_msssim_on_structured_and_coded_images():
    """Edges and flat areas (where float32 cancellation in sigma^2 shows), and real JPEG artefacts at 8 bits."""
    original = structured(200, 260)
    for q in (5, 30, 90):
        decoded = decode(encode(to_pil(original[0]), "jpeg", q))[None]
        expected = float(reference_ms_ssim(original, decoded, data_range=1.0))
        assert float(ms_ssim(original, decoded)) == pytest.approx(expected, abs=TOLERANCE)
    photo = torch.stack([im.float() / 255 for im in synthetic_images(2, 192, 224, seed=5)])
    blurred = to_8bit(torch.nn.functional.avg_pool2d(photo, 3, stride=1, padding=1, count_include_pad=False))
    expected = reference_ms_ssim(photo, blurred, data_range=1.0, size_average=False)
    assert torch.allclose(ms_ssim(photo, blurred), expected, atol=TOLERANCE, rtol=0)
    assert float(ms_ssim(original, original)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bright", [0.9, 1.0])
@pytest.mark.parametrize("q", [5, 10])
def test_ms_ssim_stays_accurate_on_bright_flat_areas(bright, q):
    """Sky-like flat bright areas are where E[x^2] - E[x]^2 cancels in float32 (uncentred, this was 1.5e-4 off a
    float64 computation); the mean-centred computation stays within 2e-5 of it, and within 1e-4 of pytorch_msssim,
    whose own float32 error here is up to 6e-5."""
    gen = torch.Generator().manual_seed(0)
    h, w = 256, 384
    image = torch.full((3, h, w), bright)
    image[:, h // 2:] = 0.3 + 0.4 * torch.rand(3, h - h // 2, w, generator=gen)
    image[1, : h // 2] -= 0.05 * torch.linspace(0, 1, w)
    image = to_8bit(image)[None]
    decoded = decode(encode(to_pil(image[0]), "jpeg", q))[None]
    exact = float(reference_ms_ssim(image.double(), decoded.double(), data_range=1.0))
    got = float(ms_ssim(image, decoded))
    assert got == pytest.approx(exact, abs=2e-5)
    assert got == pytest.approx(float(reference_ms_ssim(image, decoded, data_range=1.0)), abs=TOLERANCE)


def test_ms_ssim_refuses_what_it_cannot_measure():
    small = torch.rand(1, 3, MS_SSIM_MIN_SIDE - 1, 300)
    with pytest.raises(ValueError, match="at least 161"):
        ms_ssim(small, small)
    with pytest.raises(ValueError, match="same shape"):
        ms_ssim(torch.rand(1, 3, 170, 170), torch.rand(1, 3, 170, 171))


def test_quality_reports_psnr_always_and_ms_ssim_when_asked():
    original = structured(170, 180)
    decoded = decode(encode(to_pil(original[0]), "webp", 40))[None]
    both = quality(original, decoded)
    only_psnr = quality(original, decoded, ("psnr",))
    assert only_psnr == (both[0], None)
    assert both[1] == pytest.approx(float(reference_ms_ssim(original, decoded, data_range=1.0)), abs=TOLERANCE)
    assert quality(original[..., :100, :], decoded[..., :100, :])[1] is None  # too small for MS-SSIM


def test_parse_metrics():
    assert parse_metrics(None) == ("psnr", "ms-ssim")
    assert parse_metrics("MS-SSIM, psnr") == ("psnr", "ms-ssim")
    assert parse_metrics("psnr") == ("psnr",)
    with pytest.raises(VrtkError, match="must include psnr"):
        parse_metrics("ms-ssim")
    with pytest.raises(VrtkError, match="unknown metric.*ssim"):
        parse_metrics("psnr,ssim")


def test_quality_is_measured_once_per_decoded_image_and_the_original_once_per_image():
    images = [EvalImage(f"im{i}", im.float() / 255) for i, im in enumerate(synthetic_images(2, 64, 72, seed=2))]
    originals, calls = [], []

    def counting(original, metrics):
        originals.append(original)
        meter = QualityMeter(original, metrics)

        def measure(decoded):
            calls.append(metrics)
            return meter(decoded)

        return measure

    points, records, _ = evaluate_classical("jpeg", images, [20, 80], repeats=3, metrics=("psnr",),
                                            meter=counting)
    assert calls == [("psnr",)] * 4
    assert [o.shape for o in originals] == [(1, 3, 64, 72)] * 2
    assert [(r["quality"], r["image"]) for r in records] == [(20, "im0"), (20, "im1"), (80, "im0"), (80, "im1")]
    assert points[0]["bpp"] < points[1]["bpp"]


def test_a_reference_reused_across_decodings_gives_what_a_fresh_computation_gives():
    """The sweep builds the original's MS-SSIM share once and reuses it; every reuse must equal a fresh call, and
    the strided 2x2 pooling must equal avg_pool2d on odd and even sides."""
    original = structured(171, 190)
    meter = QualityMeter(original)
    for codec, q in [("jpeg", 10), ("webp", 60), ("jpeg", 90)]:
        decoded = decode(encode(to_pil(original[0]), codec, q))[None]
        reused = meter(decoded)
        assert reused == quality(original, decoded)
        assert reused[1] == pytest.approx(float(reference_ms_ssim(original, to_8bit(decoded), data_range=1.0)),
                                          abs=TOLERANCE)
    for h, w in [(7, 9), (8, 9), (7, 8), (10, 10)]:
        t = torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)
        assert torch.equal(halve(t), F.avg_pool2d(t, 2, padding=[h % 2, w % 2]))


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(synthetic_images(2, 168, 176, seed=7)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"im{i}.png")
    return folder


def test_eval_metrics_psnr_skips_ms_ssim(image_folder, tmp_path):
    common = ("eval", "--codec", "jpeg", "--qualities", "20,70", "--data", str(image_folder), "--repeats", "1",
              "--no-progress")
    code, _, err = run_cli(*common, "-o", str(tmp_path / "full.json"))
    assert code == 0, err
    code, out, err = run_cli(*common, "--metrics", "psnr", "-o", str(tmp_path / "psnr.json"))
    assert code == 0, err
    full = json.loads((tmp_path / "full.json").read_text())
    fast = json.loads((tmp_path / "psnr.json").read_text())
    assert all(0 < v < 1 for v in full["results"]["ms-ssim-rgb"])
    assert fast["results"]["ms-ssim-rgb"] == [None, None]
    assert fast["results"]["psnr-rgb"] == full["results"]["psnr-rgb"]
    assert fast["vrtk"]["metrics"] == ["psnr"] and full["vrtk"]["metrics"] == ["psnr", "ms-ssim"]
    assert "--metrics psnr" in fast["vrtk"]["command"] and "--metrics" not in full["vrtk"]["command"]
    assert "MS-SSIM" not in out.splitlines()[1]  # the table has no MS-SSIM column
    code, _, err = run_cli("report", str(tmp_path / "psnr.json"), "-o", str(tmp_path / "report"))
    assert code == 0, err
    assert "MS-SSIM not measured" in (tmp_path / "report" / "report.md").read_text()


def test_eval_metrics_typo_is_a_clear_error(image_folder):
    code, _, err = run_cli("eval", "--codec", "jpeg", "--data", str(image_folder), "--metrics", "psnr,msssim")
    assert code == 2 and "unknown metric" in err and "ms-ssim" in err


def test_workers_sweep_the_same_values_in_parallel(image_folder, tmp_path):
    """--workers 2 runs the real process pool: sizes equal a one-process sweep exactly and qualities to float
    rounding (a worker runs torch on one thread, the one-process sweep on all: reductions sum in another order)."""
    common = ("eval", "--codec", "webp", "--qualities", "30,80", "--data", str(image_folder), "--repeats", "1",
              "--no-progress")
    outputs = {}
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.json"
        code, _, err = run_cli(*common, "--workers", str(workers), "-o", str(path), "--per-image",
                               str(tmp_path / f"w{workers}-images.json"))
        assert code == 0, err
        outputs[workers] = json.loads(path.read_text())
        assert outputs[workers]["vrtk"]["environment"]["workers"] == workers
    assert outputs[1]["results"]["bpp"] == outputs[2]["results"]["bpp"]
    for key in ("psnr-rgb", "ms-ssim-rgb"):
        assert outputs[2]["results"][key] == pytest.approx(outputs[1]["results"][key], rel=1e-6)
    one, two = (json.loads((tmp_path / f"w{w}-images.json").read_text()) for w in (1, 2))
    def without_times(document):
        return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in document["images"]]

    assert len(one["images"]) == 4 and len(without_times(one)) == len(without_times(two))
    for a, b in zip(without_times(one), without_times(two), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == (pytest.approx(a[k], rel=1e-6) if isinstance(a[k], float) else a[k]), k
    code, _, err = run_cli(*common, "--workers", "0")
    assert code != 0 and "--workers must be at least 1" in err
    code, _, err = run_cli("eval", "default", "--data", str(image_folder), "--workers", "2", "--no-progress")
    assert code != 0 and "--workers applies to --codec" in err
