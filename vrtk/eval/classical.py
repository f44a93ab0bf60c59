"""JPEG and WebP through Pillow on the same images: the anchors every learned codec is compared with.

Same measurements as the model sweep: bytes of the encoded file (headers included, as CompressAI's Pillow
codec counts them), bpp of the original size, PSNR / MS-SSIM of the decoded 8-bit image (once per decoded image,
:class:`vrtk.eval.measure.QualityMeter`), median encode and decode time of ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from vrtk.errors import VrtkError
from vrtk.eval.evaluate import EvalImage, aggregate, progress_bar
from vrtk.eval.measure import METRICS, PeakMemory, QualityMeter, cpu_memory_kind, timed
from vrtk.images import to_pil

CODECS = {"jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITIES = list(range(5, 100, 5))  # 5..95, the span CompressAI's published Pillow curves cover


def check_codec(codec: str) -> str:
    from PIL import features

    codec = codec.lower()
    if codec not in CODECS:
        raise VrtkError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    if codec == "webp" and not features.check("webp"):
        raise VrtkError("this Pillow was built without WebP support")
    return codec


def encode(img, codec: str, q: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=CODECS[codec], quality=int(q))
    return buffer.getvalue()


def decode(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def sweep_image(codec: str, image: EvalImage, qualities: list[int], repeats: int, metrics=METRICS,
                meter=QualityMeter) -> list[tuple[dict, float]]:
    """One image at every quality: (record, peak memory MB) per quality. The original's share of MS-SSIM is
    computed once (:class:`~vrtk.eval.measure.QualityMeter`) and the codec is warmed up once."""
    memory = PeakMemory("cpu")
    img = to_pil(image.tensor)
    measure = meter(image.tensor[None], metrics)
    if qualities:
        decode(encode(img, codec, qualities[0]))  # warm-up
    out = []
    for q in qualities:
        memory.reset()
        enc_time, data = timed(lambda q=q: encode(img, codec, q), repeats)
        dec_time, decoded = timed(lambda d=data: decode(d), repeats)
        value, msssim = measure(decoded[None])
        out.append(({"image": image.name, "width": image.tensor.shape[-1], "height": image.tensor.shape[-2],
                     "quality": int(q), "bytes": len(data), "bpp": len(data) * 8 / image.pixels, "psnr": value,
                     "ms_ssim": msssim, "encoding_time": enc_time, "decoding_time": dec_time}, memory.peak_mb()))
    return out


def _sweeps(jobs: list[tuple], workers: int):
    """:func:`sweep_image` over ``jobs``, in this process or in ``workers`` processes (forked where the platform
    can: a worker then starts in milliseconds, not seconds), in order."""
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            yield sweep_image(*job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context(method)) as pool:
        yield from pool.map(_sweep_in_worker, jobs)


def _sweep_in_worker(args) -> list[tuple[dict, float]]:
    torch.set_num_threads(1)  # one core per worker process: the workers are the parallelism
    return sweep_image(*args)


def evaluate_classical(codec: str, images: list[EvalImage], qualities: list[int], repeats: int = 1,
                       progress: bool = False, metrics=METRICS, meter=QualityMeter, workers: int = 1):
    """Sweep Pillow's quality over ``images``; returns (points, per-image records, memory kind).

    Images are the outer loop (:func:`sweep_image`); ``workers`` > 1 sweeps that many images at once in
    separate processes, which divides the wall time but times each codec run beside the others' (use one
    worker per free core). ``meter(original, metrics)(decoded) -> (psnr, ms_ssim)`` is replaceable so that
    benchmarks/eval_speed.py can time another quality implementation on the very same sweep."""
    codec = check_codec(codec)
    for q in qualities:
        if not 0 <= int(q) <= 100:
            raise VrtkError(f"{codec} quality {q} is outside 0..100")
    if workers < 1:
        raise VrtkError(f"--workers must be at least 1, got {workers}")
    jobs = [(codec, image, qualities, repeats, metrics, meter) for image in images]
    bar = progress_bar(len(qualities) * len(images), codec, progress)
    swept = []
    try:
        for result in _sweeps(jobs, workers):
            swept.append(result)
            bar.update(len(qualities))
    finally:
        bar.close()
    by_quality = [[per_image[i] for per_image in swept] for i in range(len(qualities))]
    points = [aggregate([r for r, _ in pairs], max(peak for _, peak in pairs)) for pairs in by_quality]
    per_image = [record for pairs in by_quality for record, _ in pairs]
    return points, per_image, cpu_memory_kind()


def pillow_version() -> str:
    import PIL

    return PIL.__version__
