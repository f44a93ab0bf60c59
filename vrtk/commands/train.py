"""``vrtk run`` and ``vrtk recipes``."""

from __future__ import annotations

import json


def cmd_run(args) -> int:
    from vrtk.train.recipe import resolve
    from vrtk.train.runner import run_recipe

    config = resolve(args.recipe, args.overrides)
    outputs = run_recipe(config, resume=args.resume, progress=not args.no_progress, allow_code=args.allow_code)
    for path in outputs:
        print(f"model saved: {path}")
    return 0


def cmd_recipes(args) -> int:
    from vrtk.train.recipe import list_recipes

    recipes = list_recipes()
    if args.json:
        print(json.dumps(recipes, indent=2))
        return 0
    for r in recipes:
        print(f"{r['name']:<18} {r['description']}  [profiles: {', '.join(r['profiles'])}]")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="run a recipe: vrtk run RECIPE [key=value ...]")
    p.add_argument("recipe", help="a recipe name (vrtk recipes) or a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value settings (profile=cpu|paper|test, steps=..., out=...)")
    p.add_argument("--resume", action="store_true", help="continue the run in its run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("--allow-code", action="store_true",
                   help="let the recipe import a model class from outside vrtk/plugins/torch/timm/compressai")
    p.set_defaults(func=cmd_run, collect_extra="overrides")  # overrides may also follow the options

    p = sub.add_parser("recipes", help="list the recipes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)
