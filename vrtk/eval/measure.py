"""Measurements shared by the learned and the classical codecs: quality, time and peak memory.

Quality is measured the way CompressAI's ``eval_model`` does: the reconstruction is rounded to 8 bits (what a
decoded PNG holds), PSNR per image over RGB, MS-SSIM on the same 8-bit values with pytorch_msssim's definition
(11-tap Gaussian window, sigma 1.5, K = (0.01, 0.03), five scales with its weights, 2x2 average pooling with
padding on odd sides, ReLU on the contrast terms).

MS-SSIM is computed here rather than by calling pytorch_msssim because evaluation spent 95 % of its time there:
it filters five maps per scale in five separate grouped convolutions in NCHW, where PyTorch's CPU depthwise
kernel is slow. :class:`MsSsimReference` filters the original's maps (x, x^2) once per image and, per decoding,
stacks the three maps it needs (y, y^2, xy) into one channels-last tensor filtered with the separable window once
per scale (two 1-D grouped convolutions, which oneDNN runs fast in channels-last), in float32, on mean-centred
values; 2x2 pooling is four strided slices. The result is within a few 1e-6 of a float64
computation (pytorch_msssim's own float32 error reaches 2e-5) and within 1e-4 of pytorch_msssim
(tests/test_eval_speed.py), in a third of its time or less; ``benchmarks/eval_speed.py`` times both on the JPEG
and WebP sweeps.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from vrtk.codec import psnr
from vrtk.errors import VrtkError

WINDOW_SIZE, WINDOW_SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = 161  # 4 downsamplings of an 11-tap window need a side > (11 - 1) * 2**4

METRICS = ("psnr", "ms-ssim")  # what `vrtk eval --metrics` can measure; PSNR is always among them


def parse_metrics(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"psnr,ms-ssim"`` -> ("psnr", "ms-ssim"); PSNR is required because every results file and report needs it."""
    if text is None:
        return METRICS
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise VrtkError(f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if "psnr" not in names:
        raise VrtkError("--metrics must include psnr (every results file and report needs it; it costs nothing): "
                        "use --metrics psnr or --metrics psnr,ms-ssim")
    return tuple(m for m in METRICS if m in names)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().div(255)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian (size,) in float32, built exactly as pytorch_msssim builds it."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def separable_blur(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """'Valid' Gaussian filtering of every channel of (N, C, H, W): the 1-D window down the columns, then along
    the rows (pytorch_msssim's order), as two grouped convolutions; fastest on channels-last input."""
    c = maps.shape[1]
    w = window.to(dtype=maps.dtype, device=maps.device)
    out = F.conv2d(maps, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(out, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def halve(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, padding=[h % 2, w % 2])`` (zero padding counted, as pytorch_msssim pools) as four
    strided slices: the same values, several times faster than avg_pool2d on channels-last tensors."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    top, bottom = x[..., 0:2 * h:2, :], x[..., 1:2 * h:2, :]
    return (top[..., 0:2 * w:2] + top[..., 1:2 * w:2] + bottom[..., 0:2 * w:2] + bottom[..., 1:2 * w:2]) * 0.25


class MsSsimReference:
    """The original's share of MS-SSIM, computed once and reused for every decoding of it (a quality sweep
    decodes each image many times): its pyramid, and per scale its local means and local energies.

    Variances are E[x^2] - E[x]^2: in float32 that cancels badly in bright flat areas (a JPEG at quality 5 of
    kodim20 was off by 1.2e-4 uncentred). They do not change when x and y are shifted by one constant, so both
    are shifted by the original's mean first: the terms shrink and the result stays within a few 1e-6 of a
    float64 computation. The four maps a scale needs per decoding (y, y^2, xy) are filtered in one call."""

    def __init__(self, x: torch.Tensor, data_range: float = 1.0):
        if x.dim() != 4:
            raise ValueError(f"MS-SSIM needs (N, C, H, W) tensors, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} pixels on a side (4 "
                             f"downsamplings of an {WINDOW_SIZE}-tap window), got {tuple(x.shape[-2:])}")
        self.shape, self.data_range = x.shape, data_range
        self.window = gaussian_window()
        x = x.float().contiguous(memory_format=torch.channels_last)
        self.shift = x.mean((1, 2, 3), keepdim=True)
        self.scales = []  # (x - shift, blurred x - shift, blurred (x - shift)^2) per scale
        for level in range(len(SCALE_WEIGHTS)):
            centred = x - self.shift
            moments = separable_blur(torch.cat([centred, centred * centred], 1), self.window)
            self.scales.append((centred, *moments.chunk(2, 1)))
            if level < len(SCALE_WEIGHTS) - 1:
                x = halve(x)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """MS-SSIM of ``y`` against the original, per image (N,)."""
        if y.shape != self.shape:
            raise ValueError(f"ms_ssim needs two (N, C, H, W) tensors of the same shape, got {tuple(self.shape)} "
                             f"and {tuple(y.shape)}")
        c1, c2 = (K1 * self.data_range) ** 2, (K2 * self.data_range) ** 2
        y = y.float().contiguous(memory_format=torch.channels_last)
        factors = []
        for level, (x_c, mu_x, energy_x) in enumerate(self.scales):
            last = level == len(self.scales) - 1
            y_c = y - self.shift
            mu_y, energy_y, cross = separable_blur(torch.cat([y_c, y_c * y_c, x_c * y_c], 1),
                                                   self.window).chunk(3, 1)
            sigmas = (energy_x + energy_y).sub_(torch.addcmul(mu_x * mu_x, mu_y, mu_y))  # sigma_x^2 + sigma_y^2
            cs_map = (cross - mu_x * mu_y).mul_(2).add_(c2).div_(sigmas.add_(c2))
            if last:  # the luminance term needs the true means
                mx, my = mu_x + self.shift, mu_y + self.shift
                luminance = (2 * mx * my + c1).div_(torch.addcmul(mx * mx, my, my).add_(c1))
                factors.append(torch.relu((luminance * cs_map).mean((2, 3))))
            else:
                factors.append(torch.relu(cs_map.mean((2, 3))))
                y = halve(y)
        weights = torch.tensor(SCALE_WEIGHTS, dtype=y.dtype, device=y.device).view(-1, 1, 1)
        per_channel = torch.prod(torch.stack(factors) ** weights, dim=0)  # (N, C)
        return per_channel.mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM of each image pair in the batch (N,), for (N, C, H, W) tensors with sides of at least 161 pixels.

    Same definition and weights as ``pytorch_msssim.ms_ssim(x, y, data_range, size_average=False)``."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ms_ssim needs two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return MsSsimReference(x, data_range)(y)


class QualityMeter:
    """PSNR (dB) and MS-SSIM of decodings of one (1, 3, H, W) original in [0, 1]: ``meter(decoded)``.

    The original's share of MS-SSIM is computed on the first call and kept for the next ones, so a sweep that
    decodes an image at many rates pays it once. MS-SSIM is None when not asked for or when the image is too
    small for it."""

    def __init__(self, original: torch.Tensor, metrics: Iterable[str] = METRICS):
        self.original = original.float()
        self.wants_ms_ssim = "ms-ssim" in metrics and min(original.shape[-2:]) >= MS_SSIM_MIN_SIDE
        self.reference: MsSsimReference | None = None

    @torch.no_grad()
    def __call__(self, decoded: torch.Tensor) -> tuple[float, float | None]:
        decoded = to_8bit(decoded.float())
        value = psnr(decoded, self.original)
        if not self.wants_ms_ssim:
            return value, None
        if self.reference is None:
            self.reference = MsSsimReference(self.original)
        return value, float(self.reference(decoded)[0])


def quality(original: torch.Tensor, decoded: torch.Tensor,
            metrics: Iterable[str] = METRICS) -> tuple[float, float | None]:
    """PSNR (dB) and MS-SSIM of one decoding (:class:`QualityMeter` for several of one original)."""
    return QualityMeter(original, metrics)(decoded)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device="cpu") -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (synchronised on GPU) and the result of the last call."""
    times = []
    result = None
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class PeakMemory:
    """Peak memory while a sweep point runs: CUDA's allocator peak, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset per point through /proc/self/clear_refs, so each point reports
    its own peak (which includes the resident model and Python); elsewhere it is the peak since start.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.kind = "torch.cuda.max_memory_allocated (MB)" if self.device.type == "cuda" else cpu_memory_kind()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind.startswith("peak RSS of the process, reset"):
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kb = _vm_hwm_kb() if "VmHWM" in self.kind else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        return kb / 1024


@functools.cache
def cpu_memory_kind() -> str:
    """What :meth:`PeakMemory.peak_mb` reports on CPU here: a per-point peak where /proc lets it reset the
    high-water mark, else the peak since the process started. Probed once per process."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        if _vm_hwm_kb() is not None:
            return "peak RSS of the process, reset per point (VmHWM, MB)"
    except OSError:
        pass
    return "peak RSS of the process since it started (ru_maxrss, MB)"


def _vm_hwm_kb() -> int | None:
    if not os.path.exists("/proc/self/status"):
        return None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None
