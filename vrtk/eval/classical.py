"""JPEG and WebP through Pillow on the same images: the anchors every learned codec is compared with.

Same measurements as the model sweep: bytes of the encoded file (headers included, as CompressAI's Pillow
codec counts them), bpp of the original size, PSNR / MS-SSIM of the decoded 8-bit image (once per decoded image,
:func:`vrtk.eval.measure.quality`), median encode and decode time of ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from vrtk.errors import VrtkError
from vrtk.eval.evaluate import EvalImage, aggregate, progress_bar
from vrtk.eval.measure import METRICS, PeakMemory, quality, timed
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


def evaluate_classical(codec: str, images: list[EvalImage], qualities: list[int], repeats: int = 1,
                       progress: bool = False, metrics=METRICS, measure=quality):
    """Sweep Pillow's quality over ``images``; returns (points, per-image records, memory kind).

    ``measure(original, decoded, metrics) -> (psnr, ms_ssim)`` is replaceable so that benchmarks/eval_speed.py can
    time another quality implementation on the very same sweep."""
    codec = check_codec(codec)
    for q in qualities:
        if not 0 <= int(q) <= 100:
            raise VrtkError(f"{codec} quality {q} is outside 0..100")
    memory = PeakMemory("cpu")
    pil_images = [to_pil(im.tensor) for im in images]
    points, per_image = [], []
    bar = progress_bar(len(qualities) * len(images), codec, progress)
    try:
        for q in qualities:
            memory.reset()
            records = []
            for image, img in zip(images, pil_images, strict=True):
                decode(encode(img, codec, q))  # warm-up
                enc_time, data = timed(lambda img=img, q=q: encode(img, codec, q), repeats)
                dec_time, decoded = timed(lambda d=data: decode(d), repeats)
                value, msssim = measure(image.tensor[None], decoded[None], metrics)
                records.append({"image": image.name, "width": image.tensor.shape[-1],
                                "height": image.tensor.shape[-2], "quality": int(q), "bytes": len(data),
                                "bpp": len(data) * 8 / image.pixels, "psnr": value, "ms_ssim": msssim,
                                "encoding_time": enc_time, "decoding_time": dec_time})
                bar.update(1)
            points.append(aggregate(records, memory.peak_mb()))
            per_image.extend(records)
    finally:
        bar.close()
    return points, per_image, memory.kind


def pillow_version() -> str:
    import PIL

    return PIL.__version__
