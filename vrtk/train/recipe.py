"""Recipes: a YAML file of defaults and named profiles, resolved with ``key=value`` overrides into a RunConfig."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from vrtk.errors import RecipeError


@dataclass
class RunConfig:
    """Every setting a run can have; a recipe sets a subset, the command line overrides any."""

    recipe: str = ""
    profile: str = ""
    description: str = ""
    # what to train
    model: str = "default-base"  # an embedded model, an architecture name, a model folder, or module:Class
    quality: int | None = None
    metric: str = "mse"
    weights: str = "zoo"
    arch_kwargs: dict = field(default_factory=dict)
    plugins: list = field(default_factory=list)
    plugin_config: dict = field(default_factory=dict)
    train: str = "plugins"  # plugins | decoder | all | REGEX
    # the rate
    lambdas: list | None = None  # None = CompressAI's lambda for `quality`
    lambda_mode: str = "sample"  # sample: one lambda per step; sum: the sum of losses over all lambdas (eq. 8)
    per_lambda: bool = False  # train one separate model per lambda (the fixed-rate set)
    distortion: str = "mse"  # mse | ms-ssim
    # data
    data: str | list = "../shared/data/photos-train"  # one folder, a list, or comma-separated folders
    synthetic: int = 0  # >0: use this many synthetic images instead of `data` (tests)
    crop: int = 64
    batch: int = 16
    downscales: list = field(default_factory=lambda: [1, 2, 4])
    val_data: str | None = None
    val_every: int = 0
    val_images: int = 4
    # optimisation (timm factories)
    steps: int = 1000
    lr: float = 1e-4
    opt: str = "adam"
    weight_decay: float = 0.0
    sched: str = "constant"  # any timm scheduler name; `wsd` decays over the last `decay_fraction`
    decay_fraction: float = 0.2
    warmup_steps: int = 0
    min_lr: float = 1e-6
    clip: float = 1.0
    aux_lr: float = 1e-3
    ema: float = 0.0  # decay of timm's ModelEmaV3, 0 = off
    distill: float = 0.0  # not in the paper: weight of MSE(x_hat, the starting model's x_hat) (train/distill.py)
    distill_latent: float = 0.0  # not in the paper: weight of MSE(y, the starting model's y)
    quantization: str = "noise"  # noise: CompressAI, the paper; mixed: decoder gets rounded latents (not the paper)
    # bookkeeping
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    device: str = "auto"
    precision: str = "fp32"  # fp32 | tf32 | bf16-autocast (entropy models stay fp32); see runner.PRECISIONS
    log_every: int = 50
    ckpt_every: int = 500
    out: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


RECIPE_SUFFIX = ".yaml"


def builtin_recipe_dirs() -> list[Path]:
    from importlib import resources

    dirs = [Path(str(resources.files("vrtk_recipes")))]
    from vrtk.plugin_manager import get_registry

    return dirs + get_registry().recipe_dirs


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    available = {}
    for folder in builtin_recipe_dirs():
        for file in sorted(folder.glob(f"*{RECIPE_SUFFIX}")):
            available.setdefault(file.stem, file)
    if name in available:
        return available[name]
    hint = difflib.get_close_matches(name, list(available), n=3)
    raise RecipeError(f"unknown recipe {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                      + f" Available: {', '.join(sorted(available))}")


def list_recipes() -> list[dict]:
    seen = {}
    for folder in builtin_recipe_dirs():
        for file in sorted(folder.glob(f"*{RECIPE_SUFFIX}")):
            if file.stem not in seen:
                raw = read_recipe_file(file)
                seen[file.stem] = {"name": file.stem, "description": raw.get("description", ""),
                                   "profiles": sorted(raw.get("profiles", {})), "path": str(file)}
    return list(seen.values())


def read_recipe_file(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    return raw


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs, split on the first ``=``; values are YAML (``lambdas=[0.01,0.02]``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not key=value")
        try:
            out[key.strip()] = _yaml_value(value) if value != "" else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _yaml_value(text: str):
    """YAML, except that ``1e-3`` is a number (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_yaml_value(str(v)) if isinstance(v, str) else v for v in value]
    return value


def _check_keys(values: dict, where: str) -> None:
    known = [f.name for f in fields(RunConfig)]
    for key in values:
        top = key.split(".", 1)[0]
        if top not in known:
            hint = difflib.get_close_matches(top, known, n=1)
            raise RecipeError(f"{where}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _apply(values: dict, target: dict) -> None:
    for key, value in values.items():
        if "." in key:  # plugin_config.ecg.alpha_init=0.5
            head, *rest = key.split(".")
            node = target.setdefault(head, {})
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = value
        else:
            target[key] = value


def resolve(name: str, overrides: list[str] | dict | None = None) -> RunConfig:
    """Recipe defaults, then the chosen ``profile`` (default: ``cpu``), then the overrides."""
    path = find_recipe(name)
    raw = read_recipe_file(path)
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    profile = str(over.pop("profile", raw.get("default_profile", "cpu")))
    profiles = raw.get("profiles", {}) or {}
    if profile not in profiles:
        raise RecipeError(f"recipe {path.stem!r} has no profile {profile!r}; it has {sorted(profiles)}")
    merged: dict = {}
    for part, where in ((raw.get("defaults", {}) or {}, f"{path} defaults"),
                        (profiles[profile] or {}, f"{path} profile {profile}"), (over, "command line")):
        _check_keys(part, where)
        _apply(part, merged)
    merged.update(recipe=path.stem, profile=profile, description=raw.get("description", ""))
    try:
        return RunConfig(**merged)
    except TypeError as exc:
        raise RecipeError(f"recipe {path.stem}: {exc}") from None


def default_out_dir(config: RunConfig) -> str:
    return os.path.join("runs", f"{config.recipe}-{config.profile}")
