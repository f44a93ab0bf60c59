"""Arguments shared by several subcommands (how to name a model, how to name a rate) and the command line as typed."""

from __future__ import annotations

import json
import shlex

from vrtk.errors import ModelError


def add_model_args(parser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("model", help="`default`, an architecture (vrtk models), or a vrtk model folder")
    parser.add_argument("--quality", "-q", type=int, default=None, help="quality of the base architecture")
    parser.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"])
    parser.add_argument("--weights", default="zoo",
                        help="zoo (CompressAI's pretrained, cached or downloaded) | random | PATH to a checkpoint")
    parser.add_argument("--arch", default=None, help="your own CompressionModel: package.module:Class")
    parser.add_argument("--arch-kwargs", default="{}", help='constructor arguments as JSON, e.g. \'{"N":64,"M":96}\'')
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    add_allow_code_arg(parser)


def add_allow_code_arg(parser) -> None:
    """A model folder may name its own class (package.module:Class); importing it runs that package's code."""
    parser.add_argument("--allow-code", action="store_true",
                        help="let a model folder import the class it names (package.module:Class); without it "
                             "folders may only use registered architectures (vrtk models)")


def parse_arch_kwargs(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ModelError(f"--arch-kwargs is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelError("--arch-kwargs must be a JSON object")
    return value


def model_name(args) -> str:
    return args.arch or args.model


def load_from_args(args):
    """The model named on the command line, on the chosen device."""
    from vrtk.device import pick_device
    from vrtk.model import resolve_model

    wrapped = resolve_model(model_name(args), quality=args.quality, metric=args.metric, weights=args.weights,
                            arch_kwargs=parse_arch_kwargs(args.arch_kwargs),
                            allow_code=getattr(args, "allow_code", False))
    return wrapped.to(pick_device(args.device))


def add_rate_args(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--lambda", dest="lmbda", type=float, default=None, help="rate as a Lagrange multiplier")
    group.add_argument("--rate-quality", dest="rate_quality", type=float, default=None,
                       help="rate as a continuous quality 1..n over the trained lambdas")
    group.add_argument("--target-bpp", type=float, default=None, help="search the rate per image for this bpp")


def add_refine_args(parser) -> None:
    parser.add_argument("--refine", type=int, default=None, metavar="STEPS",
                        help="refine each image's latents with STEPS gradient steps before coding (slower encode; "
                             "same decoder and file format; vrtk.refine)")
    parser.add_argument("--refine-lr", type=float, default=None, metavar="LR", help="Adam step size of --refine")
    parser.add_argument("--refine-lambda", type=float, default=None, metavar="L",
                        help="lambda of the cost --refine lowers (default: the coding rate, or the model's one "
                             "trained lambda)")


def refine_from_args(args):
    """The :class:`vrtk.refine.RefineSettings` asked for, or None."""
    from vrtk.errors import VrtkError
    from vrtk.refine import DEFAULT_LR, RefineSettings

    if args.refine is None:
        if args.refine_lr is not None or args.refine_lambda is not None:
            raise VrtkError("--refine-lr and --refine-lambda need --refine STEPS")
        return None
    return RefineSettings(args.refine, args.refine_lr if args.refine_lr is not None else DEFAULT_LR,
                          args.refine_lambda)


def parse_options(items: list[str]) -> dict:
    """``--option ecg.scale=0.5`` -> {"ecg.scale": 0.5} (values are YAML scalars)."""
    import yaml

    from vrtk.errors import VrtkError

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VrtkError(f"--option {item!r}: expected KEY=VALUE, e.g. ecg.scale=0.5")
        options[key.strip()] = yaml.safe_load(value)
    return options


def command_line(parser, args) -> str:
    """The command as typed, rebuilt from the parsed arguments (only options that differ from defaults)."""
    parts = ["vrtk", args.command]
    for action in parser._actions:
        if action.dest in ("help", "func", "command"):
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:
            if value is not None:
                parts.extend(str(v) for v in (value if isinstance(value, list) else [value]))
            continue
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is True and action.nargs == 0:
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
