"""Measurements shared by the learned and the classical codecs: quality, time and peak memory.

Quality is measured the way CompressAI's ``eval_model`` does: the reconstruction is rounded to 8 bits (what a
decoded PNG holds), PSNR per image over RGB, MS-SSIM on the same 8-bit values with pytorch_msssim's definition
(11-tap Gaussian window, sigma 1.5, K = (0.01, 0.03), five scales with its weights, 2x2 average pooling with
padding on odd sides, ReLU on the contrast terms).

MS-SSIM is computed here rather than by calling pytorch_msssim because evaluation spent 95 % of its time there:
it filters five maps per scale in five separate grouped convolutions in NCHW, where PyTorch's CPU depthwise
kernel is slow. :func:`ms_ssim` stacks the four maps it needs (x, y, x^2 + y^2, xy) into one channels-last
tensor and filters it with the separable window once per scale (two 1-D grouped convolutions, which oneDNN runs
fast in channels-last), in float32, on mean-centred values. The result is within a few 1e-6 of a float64
computation (pytorch_msssim's own float32 error reaches 2e-5) and within 1e-4 of pytorch_msssim
(tests/test_eval_speed.py), in a third of its time or less; ``benchmarks/eval_speed.py`` times both on the JPEG
and WebP sweeps.
"""

from __future__ import annotations

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


def _stacked_moments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, 4C, H, W) channels-last holding x, y, x^2 + y^2 and xy: one tensor, so one filter call per scale.

    x^2 and y^2 are only ever used as sigma_x^2 + sigma_y^2, and the filter is linear, so their sum is filtered
    once instead of each separately. The caller centres x and y first (see :func:`_scale_terms`)."""
    n, c, h, w = x.shape
    stacked = torch.empty((n, 4 * c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    sx, sy, squares, cross = stacked.split(c, 1)
    sx.copy_(x)
    sy.copy_(y)
    torch.mul(x, x, out=squares)
    squares.addcmul_(y, y)
    torch.mul(x, y, out=cross)
    return stacked


def _scale_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, data_range: float,
                 with_ssim: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-channel means (N, C) of the SSIM map (only when asked: MS-SSIM uses it at the coarsest scale) and of
    the contrast-structure map at one scale."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    # Variances are E[x^2] - E[x]^2: in float32 that cancels badly in bright flat areas (a JPEG at quality 5 of
    # kodim20 was off by 1.2e-4). They do not change when x and y are shifted by one constant, so shift both by
    # their mean first: the terms shrink and the result stays within a few 1e-6 of a float64 computation.
    shift = 0.5 * (x.mean((1, 2, 3), keepdim=True) + y.mean((1, 2, 3), keepdim=True))
    mu_x, mu_y, squares, cross = separable_blur(_stacked_moments(x - shift, y - shift), window).split(x.shape[1], 1)
    sigmas = squares - torch.addcmul(mu_x * mu_x, mu_y, mu_y)  # sigma_x^2 + sigma_y^2
    cs_map = (cross - mu_x * mu_y).mul_(2).add_(c2).div_(sigmas.add_(c2))
    cs = cs_map.mean((2, 3))
    if not with_ssim:
        return None, cs
    mu_x, mu_y = mu_x + shift, mu_y + shift  # the luminance term needs the true means
    luminance = (2 * mu_x * mu_y + c1).div_(torch.addcmul(mu_x * mu_x, mu_y, mu_y).add_(c1))
    return (luminance * cs_map).mean((2, 3)), cs


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM of each image pair in the batch (N,), for (N, C, H, W) tensors with sides of at least 161 pixels.

    Same definition and weights as ``pytorch_msssim.ms_ssim(x, y, data_range, size_average=False)``."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ms_ssim needs two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} pixels on a side (4 downsamplings "
                         f"of an {WINDOW_SIZE}-tap window), got {tuple(x.shape[-2:])}")
    window = gaussian_window()
    x = x.float().contiguous(memory_format=torch.channels_last)
    y = y.float().contiguous(memory_format=torch.channels_last)
    levels = len(SCALE_WEIGHTS)
    factors = []
    for level in range(levels):
        last = level == levels - 1
        ssim, cs = _scale_terms(x, y, window, data_range, with_ssim=last)
        factors.append(torch.relu(ssim if last else cs))
        if not last:
            padding = [side % 2 for side in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    weights = torch.tensor(SCALE_WEIGHTS, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    per_channel = torch.prod(torch.stack(factors) ** weights, dim=0)  # (N, C)
    return per_channel.mean(1)


def quality(original: torch.Tensor, decoded: torch.Tensor,
            metrics: Iterable[str] = METRICS) -> tuple[float, float | None]:
    """PSNR (dB) and MS-SSIM of (1, 3, H, W) images in [0, 1]; MS-SSIM is None when not asked for or when the
    image is too small for it."""
    decoded = to_8bit(decoded.float())
    original = original.float()
    value = psnr(decoded, original)
    if "ms-ssim" not in metrics or min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return value, None
    with torch.no_grad():
        return value, float(ms_ssim(original, decoded)[0])


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
        if self.device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated (MB)"
        elif self._can_reset():
            self.kind = "peak RSS of the process, reset per point (VmHWM, MB)"
        else:
            self.kind = "peak RSS of the process since it started (ru_maxrss, MB)"

    @staticmethod
    def _can_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return _vm_hwm_kb() is not None
        except OSError:
            return False

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


def _vm_hwm_kb() -> int | None:
    if not os.path.exists("/proc/self/status"):
        return None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None
