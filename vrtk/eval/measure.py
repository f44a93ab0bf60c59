"""Measurements shared by the learned and the classical codecs: quality, time and peak memory.

Quality is measured the way CompressAI's ``eval_model`` does: the reconstruction is rounded to 8 bits (what a
decoded PNG holds), PSNR per image over RGB, MS-SSIM with pytorch_msssim on the same 8-bit values.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable

import torch

from vrtk.codec import psnr

MS_SSIM_MIN_SIDE = 161  # pytorch_msssim: 4 downsamplings of an 11-tap window need a side > (11 - 1) * 2**4


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().div(255)


def quality(original: torch.Tensor, decoded: torch.Tensor) -> tuple[float, float | None]:
    """PSNR (dB) and MS-SSIM of (1, 3, H, W) images in [0, 1]; MS-SSIM is None when the image is too small."""
    from pytorch_msssim import ms_ssim

    decoded = to_8bit(decoded.float())
    original = original.float()
    value = psnr(decoded, original)
    if min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return value, None
    return value, float(ms_ssim(original, decoded, data_range=1.0))


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
