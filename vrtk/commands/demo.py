"""``vrtk demo``: the main job on the embedded variable-rate model, offline, in well under a minute.

It codes one image at three rates and at a target bpp to real .vrtk files and back (bpp from the file, PSNR
against the original), puts JPEG and WebP (Pillow) at the same file sizes beside each, and shows what
``vrtk wrap default --plugins ecg`` would add. The image is a crop of Kodak's kodim23 (Eastman Kodak, released
for unrestricted use) unless ``--image`` names another.
"""

from __future__ import annotations

from pathlib import Path

from vrtk.errors import VrtkError

DEMO_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "demo.png"
DEMO_TARGET_BPP = 0.3


def classical_at_size(tensor, codec: str, max_bytes: int) -> tuple[int, float]:
    """The best Pillow ``codec`` file (quality 1..95) no larger than ``max_bytes``: (bytes, PSNR); (0, nan) if
    even quality 1 is larger."""
    from vrtk.codec import psnr
    from vrtk.eval.classical import decode, encode
    from vrtk.images import to_pil

    original = to_pil(tensor)
    best = None
    lo, hi = 1, 95
    while lo <= hi:  # file size grows with quality, so bisect
        mid = (lo + hi) // 2
        data = encode(original, codec, mid)
        if len(data) <= max_bytes:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    if best is None:
        return 0, float("nan")
    return len(best), psnr(decode(best), tensor)


def _anchor_text(tensor, size: int, pixels: int) -> str:
    parts = []
    for codec, label in (("jpeg", "JPEG"), ("webp", "WebP")):
        nbytes, quality = classical_at_size(tensor, codec, size)
        parts.append(f"{label} {nbytes * 8 / pixels:.3f} bpp {quality:5.2f} dB" if nbytes
                     else f"{label}: none that small")
    return " | ".join(parts)


def provenance(made_by: str, limit: int = 300) -> str:
    """How the model was made, short enough for a terminal: a long command chain (the embedded default's runs
    since v0.2) is summed up by its closing remark after the last '; ', and the full text is where to look."""
    if len(made_by) <= limit:
        return f"made by `{made_by}`"
    summary = made_by.rsplit("; ", 1)[-1] if "; " in made_by else made_by[:limit] + "..."
    return f"made by {summary} (the whole command chain: `made_by` in the model's config.json)"


def cmd_demo(args) -> int:
    from vrtk.api import Coder
    from vrtk.codec import psnr
    from vrtk.fileio import write_bytes_atomic, write_with_atomic
    from vrtk.images import load_image
    from vrtk.injection import format_param_summary, param_summary
    from vrtk.model import extend, resolve_model, trainable_setup

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise VrtkError(f"{out} exists and is not empty; pass --force or another --out")
    coder = Coder("default")
    wrapped = coder.wrapped
    lo, hi = min(wrapped.lambdas), max(wrapped.lambdas)
    plugins = ", ".join(p.name for p in wrapped.plugins)
    print(f"embedded default: {wrapped.base.arch} {wrapped.base.arch_kwargs} + {plugins}, one model for lambda "
          f"{lo:g}..{hi:g}, {provenance(wrapped.extra.get('made_by', '?'))}")
    image = load_image(args.image)
    width, height = image.size
    pixels = width * height
    print(f"{args.image} ({width}x{height}); vrtk files in {out}, JPEG/WebP (Pillow) at no more bytes:")
    runs = [(f"lambda {lam:.4g}", f"lambda-{lam:.4g}", {"lmbda": lam}) for lam in (lo, (lo * hi) ** 0.5, hi)]
    runs.append((f"target {DEMO_TARGET_BPP} bpp", "target", {"target_bpp": DEMO_TARGET_BPP}))
    for label, stem, rate in runs:
        result = coder.compress(image, **rate)
        write_bytes_atomic(out / f"{stem}.vrtk", result.data)
        decoded = coder.decode(result.data)
        write_with_atomic(out / f"{stem}.png", lambda tmp, d=decoded: d.to_pil().save(tmp, "PNG"))
        print(f"  {label:<17} vrtk {result.bpp:.3f} bpp {psnr(decoded.tensor, image.tensor):5.2f} dB | "
              f"{_anchor_text(image.tensor, len(result.data), pixels)}")
    gated = resolve_model("default")  # a copy: the coder's model stays as it is
    before = len(gated.sites)
    extend(gated, ["ecg"])
    trainable_setup(gated, "plugins")
    added = gated.sites[before:]
    print(f"vrtk wrap default --plugins ecg would add {len(added)} gates:")
    for site in added:
        print(f"    {site.path:<14} {site.plugin:<4} {site.kind:<14} {site.added_params:,} params")
    print("    " + format_param_summary(param_summary(gated.net)))
    print("next: vrtk eval default --data DIR --n-points 16, or vrtk run ecg-finetune profile=cpu; "
          "vrtk compress IMG --refine 20 spends fewer bits for a slower encode")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="code an image with the embedded default model and compare with JPEG")
    p.add_argument("--image", default=str(DEMO_IMAGE), help="an image to code (default: a Kodak crop)")
    p.add_argument("--out", default="vrtk-demo", help="folder for demo.vrtk and demo-decoded.png")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=cmd_demo)
