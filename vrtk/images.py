"""Reading images safely: every odd or hostile file ends in a clear ImageError, never a traceback."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vrtk.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (decompression bombs)


@dataclass
class LoadedImage:
    """An image as a float tensor (C, H, W) in [0, 1], C = 3, plus what was done to get there."""

    tensor: torch.Tensor
    mode: str  # "RGB" or "L": the mode to write back on decode
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.tensor.shape[-1], self.tensor.shape[-2]


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Open, validate and convert an image to RGB floats; grayscale is remembered, alpha dropped with a note."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{path}: {width}x{height} is larger than the {MAX_PIXELS // 10**6} MP limit")
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.size != (width, height):
                    notes.append("rotated by its EXIF orientation")
                array, mode = _to_array(img, notes)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: damaged or truncated image ({exc})") from None
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return LoadedImage(tensor, mode, notes)


def _to_array(img, notes: list[str]) -> tuple[np.ndarray, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if data.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        notes.append(f"{mode} ({'16' if peak > 255 else '8'}-bit) image reduced to 8 bits per sample")
        gray = np.clip(np.round(data / peak * 255.0), 0, 255).astype(np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2), "L"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (vrtk codes colour only)")
    if mode in ("L", "LA", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2), "L"
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    if mode in ("F", "I;16S"):
        raise ImageError(f"unsupported image mode {mode}")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, "RGB"


def to_pil(tensor: torch.Tensor, mode: str = "RGB"):
    """(3, H, W) floats in [0, 1] -> a PIL image in ``mode`` (rounded, clipped)."""
    from PIL import Image

    array = (tensor.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    img = Image.fromarray(array, "RGB")
    return img.convert("L") if mode == "L" else img
