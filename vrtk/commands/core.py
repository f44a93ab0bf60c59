"""``vrtk models``, ``vrtk plugins`` and ``vrtk wrap``."""

from __future__ import annotations

import json

from vrtk.commands.common import add_allow_code_arg, add_model_args, model_name, parse_arch_kwargs
from vrtk.errors import PluginError


def cmd_models(args) -> int:
    from vrtk.zoo import DEFAULT_BASE_NAME, DEFAULT_MODEL_NAME, default_base_info, list_archs

    rows = []
    for spec in list_archs(args.pattern):
        rows.append({"name": spec.name, "qualities": list(spec.qualities), "paper": spec.paper,
                     "pretrained": spec.zoo_key is not None,
                     "sizes": {str(q): spec.sizes[q] for q in spec.qualities}})
    for name in (DEFAULT_MODEL_NAME, DEFAULT_BASE_NAME):
        if args.pattern and args.pattern not in name:
            continue
        try:
            info = default_base_info()
        except Exception:  # the embedded models are optional for this listing
            break
        what = "variable-rate (bm)" if name == DEFAULT_MODEL_NAME else f"fixed-rate, lambda {info['lambda']:g}"
        rows.append({"name": name, "qualities": [], "paper": f"embedded {info['arch']}, {what}",
                     "pretrained": True, "sizes": {"-": info["arch_kwargs"]}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 1
    for row in rows:
        q = row["qualities"]
        qualities = f"q{q[0]}..{q[-1]}" if q else "-"
        sizes = ", ".join(f"{k}:{'/'.join(str(v) for v in s.values())}" for k, s in row["sizes"].items())
        weights = "embedded" if row["name"] in (DEFAULT_MODEL_NAME, DEFAULT_BASE_NAME) \
            else "zoo" if row["pretrained"] else "no weights"
        print(f"{row['name']:<26} {qualities:<7} {weights:<10} N/M per quality {sizes}")
    return 0


def cmd_plugins(args) -> int:
    from vrtk.plugin_manager import get_registry

    report = get_registry().plugins_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for p in report["plugins"]:
        registers = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registers"].items()) or "-"
        print(f"{p['name']:<12} {p['distribution'] or '-'} {p['version'] or ''}")
        print(f"    hooks: {', '.join(p['hooks'])}")
        print(f"    registers: {registers}")
    for err in report["load_errors"]:
        print(f"{err['plugin']:<12} FAILED TO LOAD ({err['distribution'] or '-'}): {err['error']}")
    return 0


def parse_plugin_settings(items: list[str]) -> dict[str, dict]:
    """``--set ecg.alpha_init=0.5`` -> {"ecg": {"alpha_init": 0.5}}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        plugin, dot, field = key.partition(".")
        if not sep or not dot:
            raise PluginError(f"--set {item!r}: expected PLUGIN.KEY=VALUE")
        out.setdefault(plugin, {})[field] = yaml.safe_load(value)
    return out


def cmd_wrap(args) -> int:
    from vrtk.model import extend, load_model, model_folder, plan, wrap
    from vrtk.zoo import BaseSpec

    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()] if args.plugins else []
    configs = parse_plugin_settings(args.set)
    folder = model_folder(model_name(args))
    if folder is not None:
        wrapped = load_model(folder, allow_code=args.allow_code)
        present = [p for p in plugins if p in [u.name for u in wrapped.plugins]]
        if present:
            raise PluginError(f"{model_name(args)} already has {', '.join(present)}; leave it out of --plugins "
                              "(or wrap the plain base `default-base`)")
        if args.dry_run:
            raise PluginError("--dry-run plans a wrap of a base architecture; wrap the folder without it")
        return _report_wrap(args, extend(wrapped, plugins, configs), plugins, wrapped.base)
    spec = BaseSpec(arch=model_name(args), quality=args.quality, metric=args.metric, weights=args.weights,
                    arch_kwargs=parse_arch_kwargs(args.arch_kwargs))
    if args.dry_run:
        planned = plan(spec, plugins, configs)
        if args.json:
            print(json.dumps({"dry_run": True, "plugins": [{"plugin": n, "targets": t} for n, t in planned]},
                             indent=2))
        else:
            for name, targets in planned:
                print(f"{name}: {len(targets)} site(s)")
                for target in targets:
                    print(f"    {target}")
        return 0
    return _report_wrap(args, wrap(spec, plugins, configs), plugins, spec)


def _report_wrap(args, wrapped, plugins: list[str], spec) -> int:
    """Print (or save) what a wrap made: its sites, trainable parameters and dense MACs."""
    from vrtk.flops import dense_kmacs_per_pixel
    from vrtk.injection import format_param_summary, param_summary
    from vrtk.model import save_model, trainable_setup

    if plugins:
        trainable_setup(wrapped, "plugins")
    summary = param_summary(wrapped.net)
    wrapped.net.update(force=True)
    macs = dense_kmacs_per_pixel(wrapped.net, lmbda=wrapped.middle_lambda())
    facts = {"base": spec.to_dict(), "plugins": plugins, "sites": [s.to_dict() for s in wrapped.sites],
             **summary, "dense_kmacs_per_pixel": macs}
    if args.output:
        facts["saved"] = str(save_model(wrapped, args.output))
    _warn_if_rate_untrained(wrapped)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    if wrapped.sites:
        width = max(len(s.path) for s in wrapped.sites)
        print(f"{'module':<{width}}  {'plugin':<8} {'kind':<14} added params")
        for s in wrapped.sites:
            print(f"{s.path:<{width}}  {s.plugin:<8} {s.kind:<14} {s.added_params:,}")
    print(format_param_summary(summary))
    print(f"dense kMACs/pixel: encoder {macs['encoder']:.2f}, decoder {macs['decoder']:.2f}")
    if args.output:
        print(f"saved: {facts['saved']}")
    return 0


def _warn_if_rate_untrained(wrapped) -> None:
    """A fresh bm/gain is the identity: say so, or the user codes every rate to the same file without knowing."""
    import sys

    from vrtk.modulation import untrained_rate_warning

    message = untrained_rate_warning(wrapped.net)
    if message:
        print(f"vrtk: warning: {message}", file=sys.stderr)  # stderr: --json output stays parseable


def cmd_convert(args) -> int:
    """Rewrite a model folder (fp16 parameters, a full checkpoint) into a new folder; the input is never touched."""
    from pathlib import Path

    from vrtk.errors import ModelError
    from vrtk.eval.storage import folder_bytes
    from vrtk.model import load_model, save_model

    source, target = Path(args.model_dir), Path(args.output)
    if target.exists() and (target.resolve() == source.resolve() or any(target.iterdir())):
        raise ModelError(f"{target}: exists and is not empty; choose a new folder (the input is never overwritten)")
    wrapped = load_model(source, allow_code=args.allow_code)
    if args.fold_lambda is not None:
        from vrtk.fold import folded_model

        wrapped = folded_model(wrapped, args.fold_lambda)
    save_model(wrapped, target, full=True if args.full else None, half=args.half)
    before, after = folder_bytes(source)["bytes"], folder_bytes(target)["bytes"]
    print(f"{source} ({before:,} bytes) -> {target} ({after:,} bytes, {100 * after / before:.1f}%); "
          f"{'parameters rounded to fp16: a new model fingerprint' if args.half else 'same weights'}")
    return 0


def cmd_export_default(args) -> int:
    from vrtk.embedded import export_default
    from vrtk.eval.storage import folder_bytes

    folder, base = export_default(args.model_dir, args.base_lambda, args.command_line)
    print(f"embedded default written: {folder} ({folder_bytes(folder)['bytes'] / 1e6:.2f} MB); its base folded at "
          f"lambda {args.base_lambda:g}: {base} ({base.stat().st_size / 1e6:.2f} MB)")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list base architectures: vrtk models [PATTERN]")
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern, e.g. '*hyper*' (- and _ alike)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("plugins", help="list installed plugins, what they register, and load errors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("wrap", help="inject plugins into a base model and save it")
    add_model_args(p)
    p.add_argument("--plugins", default="", help="comma-separated, applied in this order (e.g. ecg,bm)")
    p.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE", help="plugin setting")
    p.add_argument("--dry-run", action="store_true", help="only list the modules each plugin would change")
    p.add_argument("-o", "--output", default=None, help="model folder to write")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_wrap)

    p = sub.add_parser("convert", help="rewrite a model folder: fp16 parameters (--half), a full checkpoint (--full)")
    p.add_argument("model_dir", help="a vrtk model folder")
    p.add_argument("-o", "--output", required=True, help="a new folder (never the input)")
    add_allow_code_arg(p)
    p.add_argument("--half", action="store_true", help="learned parameters in fp16 (buffers stay exact)")
    p.add_argument("--full", action="store_true", help="every tensor, not a delta over the base")
    p.add_argument("--fold-lambda", type=float, default=None, metavar="L",
                   help="fold the rate modulators in at lambda L: a fixed-rate model of the plain architecture")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export-default", help="(maintainers) store a variable-rate model as the embedded `default` "
                                              "and its folded base as `default-base`")
    p.add_argument("model_dir", help="a variable-rate vrtk model folder (e.g. made by `vrtk run bm-finetune`)")
    p.add_argument("--base-lambda", type=float, default=0.0035,
                   help="the rate `default-base` is folded at (default 0.0035, CompressAI's quality 2)")
    p.add_argument("--command-line", required=True, help="the command that trained it, recorded with the weights")
    p.set_defaults(func=cmd_export_default)
