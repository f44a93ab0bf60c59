"""``vrtk export MODEL -o DIR --format onnx``: the transforms as ONNX graphs in a folder every backend can code with."""

from __future__ import annotations

from vrtk.commands.common import add_model_args, command_line, load_from_args, parse_options
from vrtk.commands.slim import add_slim_args


def cmd_export(args) -> int:
    if args.slim:  # a smaller dense model folder instead of graphs (vrtk/commands/slim.py)
        from vrtk.commands.slim import cmd_slim_export

        return cmd_slim_export(args)
    from vrtk.eval.results import load_results
    from vrtk.export.card import rate_text
    from vrtk.export.folder import export_onnx

    results = load_results(args.results) if args.results else None
    wrapped = load_from_args(args).to("cpu")
    command = command_line(args.parser, args)  # the command as typed, for the model card
    manifest = export_onnx(wrapped, args.output, lmbda=args.lmbda, options=parse_options(args.option),
                           command=command, results=results, opset=args.opset, force=args.force)
    rate = rate_text(manifest)
    print(f"{args.output}: {', '.join(g['file'] for g in manifest['graphs'].values())} (opset {manifest['opset']}, "
          f"{manifest['coding']}, rate: {rate})")
    for name, g in manifest["graphs"].items():
        print(f"    {name}: max difference from torch {g['max_abs_error']:.2e} ({g['max_rel_error']:.1e} of its range)")
    print(f"    model card: {args.output}/model_card.md; code with --backend onnxruntime --model {args.output}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="the transforms as ONNX graphs (+ model card), for --backend onnxruntime",
                       description="Export a model's transforms (g_a with its modulator, h_a, h_s, g_s with its "
                                   "inverse modulator) as ONNX graphs with dynamic height and width. The folder is "
                                   "also a vrtk model folder: files coded with it decode on every backend.")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--lambda", dest="lmbda", type=float, default=None,
                   help="fix the rate in the graphs (default: the rate is a graph input for variable-rate models)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="inference option built into the graphs (e.g. ecg.scale=0.5)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or newer; default 18)")
    p.add_argument("--results", default=None, metavar="EVAL.json",
                   help="a `vrtk eval` results file of this model: its bpp/PSNR go into the model card")
    p.add_argument("--force", action="store_true", help="replace an earlier export in the output folder")
    add_slim_args(p)
    p.set_defaults(func=cmd_export, parser=p)


def add_backend_arg(parser) -> None:
    """``--backend`` of compress, decompress and eval."""
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                        help="what runs the transforms: torch (default) or onnxruntime (the graphs of a folder made "
                             "by `vrtk export`, given as the model); files decode on either")
