"""``vrtk compress`` and ``vrtk decompress``: images to .vrtk files at any rate in the model's range, and back.

Outputs are planned before any work: an output that is one of the inputs is refused, an existing output needs
``--force``, and every file is written atomically (a crash never leaves half a file).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vrtk.commands.common import (
    add_model_args,
    add_rate_args,
    add_refine_args,
    load_from_args,
    parse_options,
    refine_from_args,
)
from vrtk.commands.export import add_backend_arg
from vrtk.errors import ImageError, VrtkError


def plan_outputs(inputs: list[str], output: str, suffix: str, force: bool) -> list[Path]:
    """One output path per input: ``output`` itself for a single input (unless it is a folder), else
    ``output/<stem><suffix>``. Refuses to overwrite an input, duplicates, and existing files without ``force``."""
    out = Path(output)
    if len(inputs) == 1 and not out.is_dir() and not output.endswith(os.sep):
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise VrtkError(f"{out}: several inputs need an output folder, and this is a file")
        targets = [out / (Path(p).stem + suffix) for p in inputs]
    seen: dict[Path, str] = {}
    for src, dst in zip(inputs, targets, strict=True):
        key = dst.resolve()
        if key in seen:
            raise VrtkError(f"{seen[key]} and {src} would both be written to {dst}; rename one of them")
        seen[key] = src
    input_keys = {Path(p).resolve() for p in inputs}
    for dst in targets:
        if dst.resolve() in input_keys:
            raise VrtkError(f"refusing to overwrite the input {dst}; choose another output")
        if dst.exists() and dst.is_dir():
            raise VrtkError(f"{dst} is a folder")
    existing = [str(d) for d in targets if d.exists()]
    if existing and not force:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise VrtkError(f"output exists: {shown} (use --force to replace)")
    return targets



def warn(message: str) -> None:
    print(f"vrtk: warning: {message}", file=sys.stderr)


def cmd_compress(args) -> int:
    from vrtk.api import Coder, describe_range
    from vrtk.fileio import write_bytes_atomic
    from vrtk.images import load_image

    targets = plan_outputs(args.images, args.output, ".vrtk", args.force)
    for src in args.images:
        if not Path(src).is_file():
            raise ImageError(f"{src}: no such file")
    coder = Coder(load_from_args(args), parse_options(args.option), backend=args.backend, graphs=args.model,
                  refine=refine_from_args(args))
    from vrtk.modulation import untrained_rate_warning  # a fresh bm/gain codes every rate to the same file

    if untrained := untrained_rate_warning(coder.wrapped.net):
        warn(untrained)
    rows = []
    for src, dst in zip(args.images, targets, strict=True):
        image = load_image(src)
        result = coder.compress(image, lmbda=args.lmbda, quality=args.rate_quality, target_bpp=args.target_bpp)
        write_bytes_atomic(dst, result.data, overwrite=args.force)  # exclusive: a racing writer cannot be replaced
        row = {"input": src, "output": str(dst), "width": result.width, "height": result.height,
               "mode": result.mode, "lambda": result.lmbda, "bytes": len(result.data), "bpp": result.bpp,
               "payload_bpp": result.payload_bpp, "notes": result.notes}
        if result.search is not None:
            row["target"] = result.search.to_dict()
        rows.append(row)
        if not args.json:
            rate = f"lambda {result.lmbda:.5g}" if result.lmbda is not None else "fixed rate"
            print(f"{src} -> {dst}: {result.width}x{result.height} {result.mode}, {rate}, "
                  f"{len(result.data):,} bytes, {result.bpp:.4f} bpp")
        for note in result.notes:
            if result.search is not None and note == result.search.message and result.search.reached:
                if not args.json:
                    print(f"    {note}")
            else:
                warn(f"{src}: {note}")  # stderr, also with --json: stdout stays parseable
    if args.json:
        print(json.dumps({"model": describe_range(coder.wrapped), "files": rows}, indent=2))
    return 0


def cmd_decompress(args) -> int:
    from vrtk.api import Coder, read_file
    from vrtk.container import parse
    from vrtk.fileio import atomic_path

    targets = plan_outputs(args.files, args.output, ".png", args.force)
    formats = [image_format(t) for t in targets]
    wrapped = load_from_args(args)
    coders: dict[str, Coder] = {}  # one per set of options a file asks for (options cannot be unset)
    rows = []
    for src, dst, fmt in zip(args.files, targets, formats, strict=True):
        data = read_file(src)
        key = json.dumps(parse(data).options, sort_keys=True)
        if key not in coders:
            coders[key] = Coder(wrapped if not coders else load_from_args(args), backend=args.backend,
                                graphs=args.model)
        decoded = coders[key].decode(data)
        image = decoded.to_pil()
        with atomic_path(dst, overwrite=args.force) as tmp:
            image.save(tmp, format=fmt)
        header = decoded.header
        rows.append({"input": src, "output": str(dst), "width": header.width, "height": header.height,
                     "mode": header.mode, "lambda": header.lmbda, "options": header.options})
        if not args.json:
            rate = f"lambda {header.lmbda:.5g}" if header.lmbda is not None else "fixed rate"
            print(f"{src} -> {dst}: {header.width}x{header.height} {header.mode}, {rate}")
    if args.json:
        print(json.dumps({"files": rows}, indent=2))
    return 0


def image_format(path: Path) -> str:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise VrtkError(f"{path}: cannot tell the image format from the suffix {path.suffix!r}; use .png")
    return fmt


def _model_option(p) -> None:
    p.add_argument("--model", "-m", default="default",
                   help="a vrtk model folder, `default`, or an architecture name (vrtk models); default: default")
    add_model_args(p, positional=False)
    add_backend_arg(p)


def add_parsers(sub) -> None:
    p = sub.add_parser("compress", help="images -> .vrtk files at a chosen rate",
                       description="Compress images to .vrtk files. One image: -o is the file; several: -o is a "
                                   "folder. The rate is --lambda, --rate-quality or --target-bpp (bpp counts the "
                                   "whole file); a variable-rate model given none uses the middle of its range.")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...; grayscale, palette, 16-bit, RGBA)")
    p.add_argument("-o", "--output", required=True, help="output .vrtk file, or folder for several images")
    _model_option(p)
    add_rate_args(p)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="inference option of a plugin (e.g. ecg.scale=0.5); stored in the file for the decoder")
    add_refine_args(p)
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".vrtk files -> images",
                       description="Decompress .vrtk files with the model that made them (checked by fingerprint). "
                                   "One file: -o is the image; several: -o is a folder of PNGs.")
    p.add_argument("files", nargs="+", help=".vrtk files")
    p.add_argument("-o", "--output", required=True, help="output image (format from its suffix), or a folder")
    _model_option(p)
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_decompress)
