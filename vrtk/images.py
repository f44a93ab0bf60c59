"""Reading images safely: every odd or hostile file ends in a clear ImageError, never a traceback."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vrtk.errors import ImageError, ResourceError

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
                frames = _frames_note(img)
                if frames:
                    notes.append(frames)
                bits, signed = source_bits(img)  # before load(): Pillow forgets how the file stored samples
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.size != (width, height):
                    notes.append("rotated by its EXIF orientation")
                array, mode = _to_array(img, notes, bits, signed)
    except ImageError:
        raise
    except MemoryError:
        raise ResourceError(f"{path}: out of memory while reading the image") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: damaged or truncated image ({exc})") from None
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return LoadedImage(tensor, mode, notes)


_FORMAT_LABELS = {"GIF": "animated GIF", "PNG": "animated PNG (APNG)", "WEBP": "animated WebP",
                  "TIFF": "multi-page TIFF", "MPO": "multi-picture JPEG (MPO)"}


def _frames_note(img) -> str | None:
    """An animation or a multi-page file is coded as its first frame: say so, with how many there are."""
    try:
        count = int(getattr(img, "n_frames", 1))
    except (OSError, ValueError, EOFError, SyntaxError):  # a damaged later frame: the first one still loads
        return f"{_FORMAT_LABELS.get(img.format, img.format)} with unreadable later frames: only the first is coded"
    if count <= 1:
        return None
    unit = "pages" if img.format == "TIFF" else "frames"
    return f"{_FORMAT_LABELS.get(img.format, f'{img.format} file')}: only the first of its {count} {unit} is coded"


def source_bits(img) -> tuple[int | None, bool]:
    """(bits per sample as the file stores them, signed), before ``load()``; (None, False) if not stated.
    Pillow opens a 16-bit RGB PNG or TIFF as 8-bit RGB without saying so: its raw mode still tells."""
    import re

    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if bits:
        formats = tags.get(339, ())  # SampleFormat: 2 = signed integer
        signed = 2 in (formats if isinstance(formats, tuple) else (formats,))
        return int(max(bits) if isinstance(bits, tuple) else bits), signed
    for tile in getattr(img, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
        match = re.search(r";(16|32)", str(rawmode))
        if match:
            return int(match.group(1)), str(rawmode).endswith("S")
    return None, False


def _to_array(img, notes: list[str], bits: int | None = None, signed: bool = False) -> tuple[np.ndarray, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return _integer_gray(img, notes, bits, signed), "L"
    if bits and bits > 8 and mode in ("RGB", "RGBA", "L", "LA"):
        notes.append(f"{bits}-bit {mode} reduced to 8 bits per sample (the top 8 bits of each)")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (vrtk codes colour only)")
    if mode in ("L", "LA", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2), "L"
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    if mode in ("F", "I;16S"):
        raise ImageError(f"unsupported image mode {mode} ({'floating-point' if mode == 'F' else 'signed 16-bit'} "
                         "samples have no fixed range; convert the image to 8 or 16 bits)")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, "RGB"


def _integer_gray(img, notes: list[str], bits: int | None, signed: bool) -> np.ndarray:
    """16- or 32-bit grayscale -> 8 bits, scaled by the file's bit depth (or, if it does not say, by its largest
    value); the note says which depth, which range, and how many samples were clipped."""
    data = np.asarray(img).astype(np.int64)
    if bits == 32 and not signed:
        data = data & 0xFFFFFFFF  # Pillow's 32-bit integer mode is signed: an unsigned file's top half wraps
    guessed = bits is None
    if guessed:
        top = int(data.max(initial=0))
        bits = 32 if top > 65535 else 16 if top > 255 or img.mode.startswith("I;16") else 8
    peak = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    clipped = int((data < 0).sum() + (data > peak).sum())
    kind = f"{bits}-bit {'signed ' if signed else ''}grayscale"
    how = " (the file does not state its depth: taken from its largest value)" if guessed else ""
    extra = f"; {clipped} samples outside 0..{peak} clipped" if clipped else ""
    notes.append(f"{kind} reduced to 8 bits per sample, 0..{peak} mapped to 0..255{how}{extra}")
    gray = np.clip(np.round(data.astype(np.float64) / peak * 255.0), 0, 255).astype(np.float32) / 255.0
    return np.repeat(gray[..., None], 3, axis=2)


def to_pil(tensor: torch.Tensor, mode: str = "RGB"):
    """(3, H, W) floats in [0, 1] -> a PIL image in ``mode`` (rounded, clipped)."""
    from PIL import Image

    array = (tensor.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    img = Image.fromarray(array, "RGB")
    return img.convert("L") if mode == "L" else img
