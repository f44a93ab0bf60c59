"""``vrtk eval`` (a model or a classical codec on an image folder -> results JSON) and ``vrtk report``."""

from __future__ import annotations

import dataclasses
import sys

from vrtk.commands.common import add_model_args, add_refine_args, command_line, parse_options, refine_from_args
from vrtk.commands.export import add_backend_arg
from vrtk.errors import VrtkError


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VrtkError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise VrtkError(f"{what}: no values")
    return values


def _print_table(points: list[dict], column: str, values: list) -> None:
    has_ms = any(p["ms-ssim-rgb"] is not None for p in points)
    has_macs = any("kmacs_encoder_dense" in p for p in points)
    head = f"{column:>10} {'bpp':>8} {'PSNR':>7}" + (f" {'MS-SSIM':>8}" if has_ms else "")
    head += f" {'enc s':>8} {'dec s':>8}" + (f" {'enc kMAC/px eff/dense':>22} {'dec kMAC/px eff/dense':>22}"
                                              if has_macs else "")
    print(head)
    for value, p in zip(values, points, strict=True):
        cell = "-" if value is None else f"{value:.5g}"
        line = f"{cell:>10} {p['bpp']:8.4f} {p['psnr-rgb']:7.3f}"
        if has_ms:
            line += f" {p['ms-ssim-rgb']:8.5f}" if p["ms-ssim-rgb"] is not None else f" {'-':>8}"
        line += f" {p['encoding_time']:8.4f} {p['decoding_time']:8.4f}"
        if has_macs:
            enc = f"{p['kmacs_encoder_effective']:.4g}/{p['kmacs_encoder_dense']:.4g}"
            dec = f"{p['kmacs_decoder_effective']:.4g}/{p['kmacs_decoder_dense']:.4g}"
            line += f" {enc:>22} {dec:>22}"
        print(line)


def cmd_eval(args) -> int:
    import torch

    if bool(args.model or args.arch) == bool(args.codec):
        raise VrtkError("give either a MODEL (or --arch) or --codec jpeg|webp")
    if args.repeats < 1:
        raise VrtkError("--repeats must be at least 1")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_eval(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) get their setting back


def _run_eval(args) -> int:
    from vrtk.eval.evaluate import dataset_meta, load_eval_images
    from vrtk.eval.measure import parse_metrics
    from vrtk.eval.results import write_results
    from vrtk.fileio import write_json_atomic

    command = command_line(args.parser, args)  # before args.metrics becomes a tuple: the command as typed
    args.metrics = parse_metrics(args.metrics)
    images = load_eval_images(args.data, args.limit)
    skipped = dataset_meta(args.data, images)["ms_ssim_skipped"]
    if skipped and "ms-ssim" in args.metrics:
        print(f"note: MS-SSIM left out for {len(skipped)} of {len(images)} image(s) smaller than 161 px on a side",
              file=sys.stderr)
    if args.codec:
        document, records, column, values = _eval_classical(args, images, command)
    else:
        document, records, column, values = _eval_model(args, images, command)
    if args.output:
        write_results(args.output, document)
    if args.per_image:
        write_json_atomic(args.per_image, {"name": document["name"], "results": args.output,
                                           "command": command, "images": records})
    if args.json:
        import json

        print(json.dumps(document, indent=2))
    else:
        print(f"{document['name']}: {len(images)} image(s) from {args.data}")
        points = [{k: v[i] for k, v in document["results"].items()} for i in range(len(values))]
        _print_table(points, column, values)
        if args.output:
            print(f"results: {args.output}")
        if args.per_image:
            print(f"per-image: {args.per_image}")
    return 0


def _eval_classical(args, images, command):
    from vrtk.eval.classical import DEFAULT_QUALITIES, check_codec, evaluate_classical, pillow_version
    from vrtk.eval.evaluate import dataset_meta, environment_meta, results_document

    codec = check_codec(args.codec)
    if args.lmbda is not None or args.lambdas or args.option or args.refine is not None:
        raise VrtkError("--lambda/--lambdas/--option/--refine apply to models, not to --codec")
    qualities = [int(q) for q in parse_floats(args.qualities, "--qualities")] if args.qualities else DEFAULT_QUALITIES
    points, records, memory_kind = evaluate_classical(codec, images, qualities, args.repeats,
                                                      progress=not args.no_progress, metrics=args.metrics,
                                                      workers=args.workers)
    name = args.name or codec.upper()
    meta = {"kind": "classical", "variable_rate": False, "codec": codec, "group": args.group or name,
            "library": f"Pillow {pillow_version()}", "command": command,
            "dataset": dataset_meta(args.data, images),
            "environment": {**environment_meta("cpu", args.repeats), "workers": args.workers},
            "memory": memory_kind, "metrics": list(args.metrics)}
    description = args.description or f"{codec.upper()} (Pillow {pillow_version()}), quality sweep, vrtk eval"
    return results_document(name, description, points, {"quality": qualities}, meta), records, "quality", qualities


def _eval_model(args, images, command):
    from vrtk.commands.common import load_from_args
    from vrtk.eval.evaluate import (
        dataset_meta,
        default_group,
        default_model_name,
        environment_meta,
        evaluate_model,
        rate_points,
        results_document,
    )
    from vrtk.eval.storage import model_storage
    from vrtk.model import model_folder
    from vrtk.modulation import untrained_rate_warning
    from vrtk.options import apply_options
    from vrtk.plugin_manager import get_registry

    if args.qualities:
        raise VrtkError("--qualities applies to --codec, not to models (use --lambda/--lambdas/--n-points)")
    if args.workers != 1:
        raise VrtkError("--workers applies to --codec sweeps; a model uses --threads")
    wrapped = load_from_args(args)
    untrained = untrained_rate_warning(wrapped.net)
    if untrained:  # a sweep of such a model is one point repeated
        print(f"vrtk: warning: {untrained}", file=sys.stderr)
    registry = get_registry()
    lambdas = rate_points(wrapped, args.lmbda, parse_floats(args.lambdas, "--lambdas") if args.lambdas else None,
                          args.n_points)
    fingerprint = wrapped.fingerprint()
    options = parse_options(args.option)
    apply_options(wrapped.net, options, registry)
    device = next(wrapped.net.parameters()).device
    codec, refiner = None, None
    if args.backend != "torch":  # the transforms on another backend; MACs are still counted on torch
        from vrtk.export.view import codec_view

        codec = codec_view(wrapped, args.backend, args.model, options)
    refine = refine_from_args(args)
    if refine is not None:
        from vrtk.export.view import CodecView
        from vrtk.refine import RefiningCodec

        refiner = RefiningCodec(wrapped, codec if codec is not None else CodecView(wrapped.net, options=options),
                                refine)
    points, records, memory_kind = evaluate_model(wrapped, images, lambdas, args.repeats, device,
                                                  macs=not args.no_macs, registry=registry,
                                                  progress=not args.no_progress, metrics=args.metrics, codec=codec,
                                                  refiner=refiner)
    source = args.model or args.arch
    name = args.name or default_model_name(source, options, args.quality) + (f" refine{refine.steps}"
                                                                             if refine else "")
    storage = model_storage(wrapped, model_folder(source) if source else None)
    model = {"source": source, "arch": wrapped.base.arch, "quality": wrapped.base.quality,
             "metric": wrapped.metric, "weights": wrapped.base.weights, "arch_kwargs": wrapped.base.arch_kwargs,
             "plugins": [{"name": p.name, "version": p.version} for p in wrapped.plugins],
             "trained_lambdas": list(wrapped.lambdas), "fingerprint": fingerprint}
    meta = {"kind": "model", "variable_rate": wrapped.variable_rate,
            "group": args.group or args.name or (name if wrapped.variable_rate else default_group(wrapped, options)),
            "model": model, "options": options, "backend": args.backend,
            "refine": dataclasses.asdict(refine) if refine else None, "params": {"all": storage["params"],
                                                           "plugin": storage["plugin_params"]},
            "storage": storage, "command": command, "dataset": dataset_meta(args.data, images),
            "environment": environment_meta(device, args.repeats), "memory": memory_kind,
            "metrics": list(args.metrics),
            "units": {"kmacs": "thousand multiply-accumulates per pixel of the padded input (1 MAC = 2 FLOPs)",
                      "time": "seconds per image, median of repeats, mean over images",
                      "mps": "megapixels per second over all images"}}
    description = args.description or ("vrtk eval: real bitstreams (CompressAI entropy coder), "
                                       + ("variable-rate sweep" if wrapped.variable_rate else "fixed-rate model"))
    document = results_document(name, description, points, {"lambda": lambdas}, meta)
    return document, records, "lambda", lambdas


def cmd_report(args) -> int:
    from vrtk.eval.report import build_report

    summary = build_report(args.results, args.output, anchor=args.anchor, references=args.reference,
                           reference_match=args.reference_match, flops_baseline=args.flops_baseline,
                           title=args.title, command=command_line(args.parser, args))
    print(f"report: {args.output}/report.md ({', '.join(summary['figures']) or 'no figures'})")
    print(f"BD against {summary['anchor']} (PCHIP, overlapping range; † = overlap below "
          f"{100 * summary['bd_summary']['min_overlap']:.0f} % of the joint range, unreliable):")
    for row in summary["bd"]:
        rate = _bd_cell(row["bd_rate_psnr"], row["reliable_bd_rate_psnr"], "+.2f", " %")
        gain = _bd_cell(row["bd_psnr"], row["reliable_bd_psnr"], "+.3f", " dB")
        print(f"  {row['curve']:<48} BD-rate {rate:>12}  BD-PSNR {gain:>13}  "
              f"overlap {100 * row['overlap_psnr']:3.0f} % / rate {100 * row['overlap_rate']:3.0f} %")
    return 0


def _bd_cell(value, reliable: bool, spec: str, suffix: str) -> str:
    """A BD number for the terminal, marked † like in report.md when its overlap is too small to quote."""
    if value is None:
        return "–"
    return f"{value:{spec}}{suffix}" + ("" if reliable else " †")


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (rate sweep) or JPEG/WebP on an image folder")
    p.add_argument("model", nargs="?", default=None,
                   help="`default`, an architecture, or a vrtk model folder (omit with --codec)")
    add_model_args(p, positional=False)
    p.add_argument("--data", required=True, help="folder of images (e.g. Kodak)")
    p.add_argument("--codec", default=None, choices=["jpeg", "webp"], help="a classical anchor through Pillow")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--lambda", dest="lmbda", type=float, default=None, metavar="L",
                      help="one rate (variable-rate models)")
    rate.add_argument("--lambdas", default=None, metavar="A,B,C", help="comma-separated rates inside the trained range")
    p.add_argument("--n-points", type=int, default=16,
                   help="rates evenly spaced in log lambda over the trained range (variable-rate models)")
    p.add_argument("--qualities", default=None, metavar="Q1,Q2",
                   help="comma-separated Pillow qualities for --codec (default 5..95)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="inference option a plugin takes, e.g. ecg.scale=0.5 (repeatable)")
    add_refine_args(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per image; the median is kept")
    p.add_argument("--no-macs", action="store_true", help="skip counting MACs (then one warm-up per rate)")
    p.add_argument("--metrics", default=None, metavar="psnr[,ms-ssim]",
                   help="quality metrics to measure (default: psnr,ms-ssim); `psnr` skips MS-SSIM, the slow one")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the timings")
    p.add_argument("--workers", type=int, default=1,
                   help="--codec: images swept at once in separate processes (one per free core); divides the "
                        "wall time, but each codec run is then timed beside the others")
    add_backend_arg(p)
    p.add_argument("--name", default=None, help="curve name (default: from the model or codec)")
    p.add_argument("--group", default=None,
                   help="curve that one-point results of fixed-rate models join (default: --name, else "
                        "architecture + plugins + metric + options)")
    p.add_argument("--description", default=None)
    p.add_argument("-o", "--output", default=None, help="results JSON (CompressAI's schema + a vrtk block)")
    p.add_argument("--per-image", default=None, metavar="FILE", help="also write per-image records (JSON)")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of the table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval, parser=p)

    p = sub.add_parser("report", help="RD plots, BD-rate, storage, MACs and runtime from results files")
    p.add_argument("results", nargs="+", help="results JSON files (vrtk eval or CompressAI's schema)")
    p.add_argument("-o", "--output", required=True, help="folder for report.md, report.json and PNGs")
    p.add_argument("--anchor", default=None, help="curve the BD numbers are against (default: JPEG if present)")
    p.add_argument("--reference", action="append", default=[], metavar="PATH",
                   help="published results (a JSON file or a folder of them), drawn dotted; repeatable")
    p.add_argument("--reference-match", action="append", default=[], metavar="GLOB",
                   help="only reference files whose name matches, e.g. 'compressai-bmshj2018-hyperprior_mse_cuda*'")
    p.add_argument("--flops-baseline", default=None, help="dense model the PSNR drop is measured against")
    p.add_argument("--title", default="vrtk report")
    p.set_defaults(func=cmd_report, parser=p)
