"""``vrtk demo``: the main job on the embedded default model, offline, in well under a minute.

It codes one image to a real .vrtk file and back (bpp from the file, PSNR against the original), compares JPEG at
the same size, and shows what ``vrtk wrap default --plugins ecg,bm`` would add. The image is a crop of Kodak's
kodim23 (Eastman Kodak, released for unrestricted use) unless ``--image`` names another.
"""

from __future__ import annotations

import io
from pathlib import Path

from vrtk.errors import VrtkError

DEMO_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "demo.png"


def jpeg_at_size(tensor, max_bytes: int) -> tuple[int, float]:
    """The best Pillow JPEG (quality 1..95) no larger than ``max_bytes``: (bytes, PSNR)."""
    import numpy as np
    import torch
    from PIL import Image

    from vrtk.codec import psnr
    from vrtk.images import to_pil

    original = to_pil(tensor)
    best = None
    lo, hi = 1, 95
    while lo <= hi:
        mid = (lo + hi) // 2
        buf = io.BytesIO()
        original.save(buf, "JPEG", quality=mid)
        if buf.tell() <= max_bytes:
            best, lo = buf.getvalue(), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return 0, float("nan")
    decoded = np.asarray(Image.open(io.BytesIO(best)).convert("RGB"), dtype=np.float32) / 255
    return len(best), psnr(torch.from_numpy(decoded).permute(2, 0, 1), tensor)


def cmd_demo(args) -> int:
    from vrtk.api import Coder
    from vrtk.codec import psnr
    from vrtk.fileio import write_bytes_atomic, write_with_atomic
    from vrtk.images import load_image
    from vrtk.injection import format_param_summary, param_summary
    from vrtk.model import trainable_setup, wrap
    from vrtk.zoo import BaseSpec, default_model_info

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise VrtkError(f"{out} exists and is not empty; pass --force or another --out")
    info = default_model_info()
    print(f"embedded default: {info['arch']} {info['arch_kwargs']}, lambda {info['lambda']}, made by "
          f"`{info['made_by']}`")
    image = load_image(args.image)
    coder = Coder("default")
    result = coder.compress(image)
    write_bytes_atomic(out / "demo.vrtk", result.data)
    decoded = coder.decode(result.data)
    write_with_atomic(out / "demo-decoded.png", lambda tmp: decoded.to_pil().save(tmp, "PNG"))
    quality = psnr(decoded.tensor, image.tensor)
    width, height = image.size
    print(f"{args.image} ({width}x{height}) -> {out / 'demo.vrtk'}: {len(result.data)} bytes, "
          f"{result.bpp:.3f} bpp, PSNR {quality:.2f} dB -> {out / 'demo-decoded.png'}")
    jpeg_bytes, jpeg_psnr = jpeg_at_size(image.tensor, len(result.data))
    if jpeg_bytes:
        print(f"JPEG (Pillow) at no more bytes: {jpeg_bytes} bytes, {jpeg_bytes * 8 / (width * height):.3f} bpp, "
              f"PSNR {jpeg_psnr:.2f} dB")
    else:
        print(f"JPEG (Pillow) cannot make a file of {len(result.data)} bytes or fewer from this image")
    wrapped = wrap(BaseSpec("default"), ["ecg", "bm"])
    trainable_setup(wrapped, "plugins")
    print(f"vrtk wrap default --plugins ecg,bm would add {len(wrapped.sites)} modules:")
    for site in wrapped.sites:
        print(f"    {site.path:<12} {site.plugin:<4} {site.kind:<14} {site.added_params:,} params")
    print("    " + format_param_summary(param_summary(wrapped.net)))
    print("next: vrtk run bm-finetune profile=cpu, then vrtk eval runs/bm-finetune-cpu/model --data DIR")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="code an image with the embedded default model and compare with JPEG")
    p.add_argument("--image", default=str(DEMO_IMAGE), help="an image to code (default: a Kodak crop)")
    p.add_argument("--out", default="vrtk-demo", help="folder for demo.vrtk and demo-decoded.png")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=cmd_demo)
