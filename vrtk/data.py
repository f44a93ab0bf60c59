"""Training data: random crops from an image folder (with downscaled copies), and synthetic images for tests.

Sampling draws from an explicit ``torch.Generator`` whose state is checkpointed, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vrtk.errors import ImageError
from vrtk.images import list_images, load_image


class CropSampler:
    """Holds every training image in memory as uint8 and cuts random crops (with horizontal flips)."""

    def __init__(self, images: list[torch.Tensor], crop: int, flip: bool = True):
        usable = [img for img in images if img.shape[-1] >= crop and img.shape[-2] >= crop]
        if not usable:
            raise ImageError(f"no training image is at least {crop}x{crop} pixels")
        self.images = usable
        self.crop = crop
        self.flip = flip
        # Sample images in proportion to their area so every pixel is about equally likely.
        self.weights = torch.tensor([float((i.shape[-1] - crop + 1) * (i.shape[-2] - crop + 1)) for i in usable])

    @classmethod
    def from_folders(cls, folders, crop: int, downscales=(1,), flip: bool = True) -> CropSampler:
        """Every image of every folder (``folders``: one path, a list, or comma-separated paths)."""
        images = []
        for folder in data_folders(folders):
            for path in list_images(folder):
                base = (load_image(path).tensor * 255).round().to(torch.uint8)
                for factor in downscales:
                    images.append(base if factor == 1 else downscale(base, factor))
        return cls(images, crop, flip)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        picks = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        crops = []
        for idx in picks.tolist():
            img = self.images[idx]
            top = int(torch.randint(0, img.shape[-2] - self.crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, img.shape[-1] - self.crop + 1, (1,), generator=generator))
            crop = img[:, top:top + self.crop, left:left + self.crop]
            if self.flip and bool(torch.rand(1, generator=generator) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops).float().div_(255.0)


def data_folders(folders) -> list[str]:
    """``data=a,b`` on the command line or ``data: [a, b]`` in a recipe: the training folders, in order."""
    items = folders if isinstance(folders, (list, tuple)) else str(folders).split(",")
    names = [str(f).strip() for f in items if str(f).strip()]
    if not names:
        raise ImageError("no training data folder given (data=FOLDER or data=[FOLDER, ...])")
    return names


def downscale(img_u8: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average downscale: smaller copies add coarse detail, as in CompressAI's training sets."""
    small = F.avg_pool2d(img_u8[None].float(), factor)[0]
    return small.round().clamp(0, 255).to(torch.uint8)


def synthetic_images(count: int, height: int = 96, width: int = 128, seed: int = 0) -> list[torch.Tensor]:
    """Smooth colour fields with edges and texture: compressible like photos, made without any file."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    out = []
    for _ in range(count):
        channels = []
        params = torch.rand(3, 6, generator=gen)
        for c in range(3):
            a, b, fx, fy, phase, edge = params[c].tolist()
            field = a * xs + b * ys + 0.25 * torch.sin(2 * math.pi * (fx * 3 * xs + fy * 3 * ys) + 6 * phase)
            field = field + 0.3 * (xs + ys > 0.5 + 0.5 * edge).float()
            channels.append(field)
        img = torch.stack(channels)
        img = img + 0.03 * torch.randn(img.shape, generator=gen)
        img = (img - img.amin()) / (img.amax() - img.amin() + 1e-8)
        out.append((img * 255).round().to(torch.uint8))
    return out
