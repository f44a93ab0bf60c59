"""Pack the training photos and Kodak into `.gpu/` for benchmarks/gpu_pretrain.sh on a device machine.

A device call carries the working tree, wheels and data together, 64 MiB in all, and `../shared` does not travel.
The photos are 84 MB (PNG) + 71 MB (JPEG), so the training copies are downscaled 2x (Lanczos) and stored as JPEG
quality 92 with full (4:4:4) chroma, about 24 MiB; Kodak, for evaluation only, is copied bit for bit (15 MB PNG).
`.gpu/` is ignored through .git/info/exclude (added there if missing): it is never committed.

    python benchmarks/pack_training_data.py            # (re)build .gpu/ and print what a device call carries
    python benchmarks/pack_training_data.py --sizes    # only print the sizes

Layout: .gpu/train/photos-train/*.jpg, .gpu/train/photos-train-2/*.jpg (+ its licence files), .gpu/kodak/*.png,
.gpu/MANIFEST.json (sources, settings, counts, bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIB = 2**20
TRAVEL_LIMIT_MIB = 64  # the device tool's limit on the working tree plus carried paths
DEFAULT_CARRY = (".whl", ".gpu")


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"pack_training_data: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"pack_training_data: {folder} holds no PNG or JPEG images")
    return files


def pack_training_folder(src: Path, dst: Path, scale: float, quality: int) -> dict:
    """Every image of ``src``, EXIF-rotated as vrtk loads it, resized by ``scale``, as RGB JPEG with 4:4:4 chroma;
    non-image files (READMEs, licences) are copied as they are."""
    dst.mkdir(parents=True)
    count = 0
    for path in images_in(src):
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        rgb.save(dst / f"{path.stem}.jpg", "JPEG", quality=quality, subsampling=0)
        count += 1
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copy2(path, dst / path.name)
    return {"source": str(src), "images": count, "bytes": folder_bytes(dst), "scale": scale,
            "jpeg_quality": quality, "chroma": "4:4:4"}


def copy_images(src: Path, dst: Path) -> dict:
    dst.mkdir(parents=True)
    files = images_in(src)
    for path in files:
        shutil.copy2(path, dst / path.name)
    return {"source": str(src), "images": len(files), "bytes": folder_bytes(dst), "copied": "bit for bit"}


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def ensure_ignored(name: str) -> None:
    """Add ``/name/`` to .git/info/exclude unless git already ignores it (data is never committed)."""
    probe = subprocess.run(["git", "check-ignore", "-q", f"{name}/probe"], cwd=REPO)
    if probe.returncode == 0:
        return
    exclude = REPO / git("rev-parse", "--git-path", "info/exclude").strip()
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a") as fh:
        fh.write(f"/{name}/\n")
    print(f"added /{name}/ to {exclude.relative_to(REPO)}")


def travelling_tree_bytes() -> int:
    """Tracked and untracked-but-not-ignored files: what a device call sends besides the carried paths."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sum((REPO / n).stat().st_size for n in names if n and (REPO / n).is_file())


def report_sizes(carry: tuple[str, ...], limit_mib: float) -> bool:
    carried = {name: folder_bytes(REPO / name) for name in carry}
    tree = travelling_tree_bytes()
    ok = True
    for name, size in carried.items():
        print(f"{name + '/':<24} {size / MIB:8.2f} MiB" + ("" if size else "   (missing)"))
        ok &= size > 0
    both = sum(carried.values())
    print(f"{' + '.join(carry):<24} {both / MIB:8.2f} MiB   (must stay under {limit_mib:g} MiB)")
    print(f"{'working tree':<24} {tree / MIB:8.2f} MiB   (tracked + untracked, not ignored)")
    print(f"{'a device call carries':<24} {(both + tree) / MIB:8.2f} MiB   (limit {TRAVEL_LIMIT_MIB} MiB)")
    ok &= both < limit_mib * MIB and both + tree < TRAVEL_LIMIT_MIB * MIB
    if not ok:
        print("pack_training_data: too large or incomplete: build the wheels (see benchmarks/gpu_pretrain.sh), "
              "or pack with a smaller --scale/--quality", file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", type=Path,
                        default=[SHARED / "photos-train", SHARED / "photos-train-2"], help="training folders")
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak", help="evaluation folder (copied as is)")
    parser.add_argument("--out", default=".gpu", help="a folder in the repository root (default .gpu)")
    parser.add_argument("--scale", type=float, default=0.5, help="resize factor for the training photos")
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality for the training photos")
    parser.add_argument("--limit-mib", type=float, default=60.0, help="the most .whl + OUT may take together")
    parser.add_argument("--sizes", action="store_true", help="only print the sizes of what a device call carries")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1 or not 1 <= args.quality <= 100:
        parser.error("--scale is in (0, 1], --quality in 1..100")
    out = REPO / args.out
    if out.parent != REPO or out.name in ("", ".", ".."):
        parser.error("--out is one folder name in the repository root, e.g. .gpu")
    carry = tuple(dict.fromkeys((".whl", args.out)))
    if args.sizes:
        return 0 if report_sizes(carry, args.limit_mib) else 1

    ensure_ignored(out.name)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    manifest: dict = {"made_by": "benchmarks/pack_training_data.py", "train": {}, "kodak": None}
    for src in args.train:
        if src.name in manifest["train"]:
            parser.error(f"two training folders are named {src.name}")
        manifest["train"][src.name] = pack_training_folder(src, staging / "train" / src.name, args.scale,
                                                           args.quality)
        info = manifest["train"][src.name]
        print(f"train/{src.name}: {info['images']} images, {info['bytes'] / MIB:.2f} MiB")
    manifest["kodak"] = copy_images(args.kodak, staging / "kodak")
    print(f"kodak: {manifest['kodak']['images']} images, {manifest['kodak']['bytes'] / MIB:.2f} MiB")
    (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"wrote {out.relative_to(REPO)}/")
    return 0 if report_sizes(carry, args.limit_mib) else 1


if __name__ == "__main__":
    sys.exit(main())
