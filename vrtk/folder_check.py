"""Checks of a model folder before anything is built or imported: its config.json and weights may come from anyone.

* No code from a folder: its architecture must be a registered one (``vrtk models``: CompressAI's and those of
  installed plugins). ``package.module:Class`` is accepted without ``--allow-code`` (``allow_code=True``) only
  when it names a registered architecture's class that is already imported, so nothing new is imported; any other
  class is refused with a message naming the flag, before its module is imported.
* Every size is checked against limits real models never reach (CompressAI's largest: N=192, M=320), before the
  network is built: architecture sizes, plugin widths, lambda lists, and the tensors' shapes and values.
* Every malformed field ends in a ModelError naming the file and the field, never a traceback.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from pathlib import Path

import torch

from vrtk.checks import check_arch_kwargs, is_int, is_number, shown
from vrtk.errors import ModelError
from vrtk.plugin_manager import get_registry
from vrtk.zoo import (
    DEFAULT_BASE_NAME,
    DEFAULT_MODEL_NAME,
    _is_cdf_buffer,
    all_archs,
    canonical_name,
    get_arch,
    registered_class,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vrtk-model"
FORMAT_VERSION = 1

MAX_CONFIG_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64  # our own configs are 5 deep
MAX_QUALITY = 64
MAX_LAMBDAS = 256
MAX_LAMBDA = 1e6  # CompressAI's MS-SSIM lambdas reach 220
MAX_PLUGINS = 16
MAX_PLUGIN_WIDTH = 4096  # width-like plugin settings (bm's hidden MLP: 50)
MAX_INT = 2**31 - 1
MAX_LIST = 1024
MAX_STRING = 4096
MAX_QUANTILE = 1e4  # EntropyBottleneck quantiles: trained models stay within +-100; update() costs C x range
MAX_SCALE_TABLE = 4096
METRICS = ("mse", "ms-ssim")
WIDTH_FIELD = re.compile(r"(.*_)?(hidden|channels|width|features|dim)")
HEX64 = re.compile(r"[0-9a-f]{64}")


# -- config.json --------------------------------------------------------------------------------------------------
def read_config(path: Path) -> dict:
    """config.json as a dict, or a ModelError: too large, not UTF-8, not JSON, too deep, not an object."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path}: {size:,} bytes is larger than any model config ({MAX_CONFIG_BYTES:,})")
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except ModelError:
        raise
    except OSError as exc:
        raise ModelError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ModelError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ModelError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a vrtk model config (a JSON object), but a JSON {type(config).__name__}")
    if json_depth(config) > MAX_JSON_DEPTH:
        raise ModelError(f"{path}: JSON nested more than {MAX_JSON_DEPTH} deep")
    return config


def json_depth(value) -> int:
    """Nesting depth of a JSON value, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def check_config(config: dict, where: Path, allow_code: bool, registry=None) -> None:
    """Every field load_model uses, checked for type and size before anything is built or imported."""
    if config.get("format") != FORMAT:
        raise ModelError(f"{where}: not a vrtk model config (format is {str(config.get('format'))[:40]!r}, "
                         f"expected {FORMAT!r})")
    version = config.get("format_version")
    if not is_int(version) or version < 1:
        raise ModelError(f"{where}: format_version must be a positive integer, not {shown(version)}")
    if version > FORMAT_VERSION:
        raise ModelError(f"{where}: format version {version} is newer than this vrtk ({FORMAT_VERSION}); "
                         "upgrade vrtk")
    base = config.get("base")
    if not isinstance(base, dict):
        raise ModelError(f"{where}: 'base' must be an object naming the base model, not {shown(base)}")
    check_base(base, where, allow_code)
    if config.get("weights", "delta") not in ("delta", "full"):
        raise ModelError(f"{where}: 'weights' must be \"delta\" or \"full\", not {shown(config.get('weights'))}")
    rate = config.get("rate", {})
    if not isinstance(rate, dict):
        raise ModelError(f"{where}: 'rate' must be an object, not {shown(rate)}")
    check_lambdas(rate.get("lambdas", []), f"{where}: rate.lambdas", allow_empty=True)
    if rate.get("metric", "mse") not in METRICS:
        raise ModelError(f"{where}: rate.metric must be one of {METRICS}, not {shown(rate.get('metric'))}")
    for key in ("extra",):
        if not isinstance(config.get(key, {}), dict):
            raise ModelError(f"{where}: {key!r} must be an object, not {shown(config.get(key))}")
    check_plugins(config.get("plugins", []), where, registry)


def check_base(base: dict, where: Path, allow_code: bool) -> None:
    arch = base.get("arch")
    if not isinstance(arch, str) or not arch.strip() or len(arch) > 256:
        raise ModelError(f"{where}: base.arch must be an architecture name (vrtk models), not {shown(arch)}")
    check_arch(arch, where, allow_code)
    quality = base.get("quality")
    if quality is not None and (not is_int(quality) or not 1 <= quality <= MAX_QUALITY):
        raise ModelError(f"{where}: base.quality must be an integer 1..{MAX_QUALITY} or null, not {shown(quality)}")
    if base.get("metric", "mse") not in METRICS:
        raise ModelError(f"{where}: base.metric must be one of {METRICS}, not {shown(base.get('metric'))}")
    weights = base.get("weights", "zoo")
    if not isinstance(weights, str) or not weights or len(weights) > MAX_STRING or "\0" in weights:
        raise ModelError(f"{where}: base.weights must be zoo, random or a checkpoint path, not {shown(weights)}")
    digest = base.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and HEX64.fullmatch(digest)):
        raise ModelError(f"{where}: base.weights_sha256 must be 64 hex digits or null, not {shown(digest)}")
    check_arch_kwargs(base.get("arch_kwargs", {}), f"{where}: base.arch_kwargs")


# -- architectures: no import unless allowed ------------------------------------------------------------------------
def check_arch(arch: str, where, allow_code: bool) -> None:
    """A registered name passes; ``package.module:Class`` passes only as an imported registered class, or with
    ``allow_code``. Nothing is imported here."""
    if ":" not in arch:
        if arch not in (DEFAULT_MODEL_NAME, DEFAULT_BASE_NAME) and canonical_name(arch) not in all_archs():
            get_arch(arch)  # raises the usual "Unknown model ... Did you mean" ModelError
        return
    if allow_code or registered_class(arch) is not None:
        return
    raise ModelError(f"{where}: names the class {arch!r}; loading it would import and run code from "
                     f"{arch.split(':', 1)[0].split('.')[0]!r}. Model folders may only use registered architectures "
                     "(vrtk models). If you trust this folder, pass --allow-code (Python: allow_code=True).")


def check_lambdas(values, where: str, allow_empty: bool = False) -> list[float]:
    """A lambda list: at most MAX_LAMBDAS finite positive numbers up to MAX_LAMBDA."""
    if not isinstance(values, list) or (not values and not allow_empty):
        raise ModelError(f"{where} must be a list of positive numbers, not {shown(values)}")
    if len(values) > MAX_LAMBDAS:
        raise ModelError(f"{where}: {len(values)} lambdas (at most {MAX_LAMBDAS})")
    for value in values:
        if not (is_number(value) and math.isfinite(value) and 0 < value <= MAX_LAMBDA):
            raise ModelError(f"{where}: {shown(value)} is not a lambda (a finite number in (0, {MAX_LAMBDA:g}])")
    return [float(v) for v in values]


# -- plugins --------------------------------------------------------------------------------------------------------
def check_plugins(plugins, where: Path, registry=None) -> None:
    """The plugin list and each plugin's settings, against the types its config dataclass declares."""
    if not isinstance(plugins, list):
        raise ModelError(f"{where}: 'plugins' must be a list of {{\"name\": ..., \"config\": {{...}}}}, "
                         f"not {shown(plugins)}")
    if len(plugins) > MAX_PLUGINS:
        raise ModelError(f"{where}: {len(plugins)} plugins (at most {MAX_PLUGINS})")
    seen = set()
    for i, entry in enumerate(plugins):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ModelError(f"{where}: plugins[{i}] must be an object with a \"name\", not {shown(entry)}")
        name = entry["name"]
        if name in seen:
            raise ModelError(f"{where}: plugin {name!r} is listed twice")
        seen.add(name)
        settings = entry.get("config", {})
        if not isinstance(settings, dict):
            raise ModelError(f"{where}: plugins[{i}].config must be an object, not {shown(settings)}")
        version = entry.get("version")
        if version is not None and not (isinstance(version, str) and len(version) <= 256):
            raise ModelError(f"{where}: plugins[{i}].version must be a string or null, not {shown(version)}")
        check_plugin_settings(name, settings, f"{where}: plugin {name!r}", registry)


def check_plugin_settings(name: str, settings: dict, where: str, registry=None) -> None:
    """Each setting: bounded in general, of its declared type, widths and lambda lists within their limits."""
    registry = registry or get_registry()
    injector = registry.injectors.get(name)
    hints = _type_hints(injector.config_class) if injector is not None else {}
    for key, value in settings.items():
        label = f"{where} setting {key!r}"
        _check_bounded(value, label)
        if key in hints and not _fits(value, hints[key]):
            raise ModelError(f"{label} must be {_type_name(hints[key])}, not {shown(value)}")
        if key == "lambdas" and value is not None:
            check_lambdas(value, label)
        elif WIDTH_FIELD.fullmatch(key) and is_int(value) and not 1 <= value <= MAX_PLUGIN_WIDTH:
            raise ModelError(f"{label} must be 1..{MAX_PLUGIN_WIDTH}, not {value}")


def _check_bounded(value, label: str) -> None:
    """JSON that no real setting exceeds: short lists and strings, finite 32-bit-range numbers."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if len(item) > MAX_LIST:
                raise ModelError(f"{label}: an object of {len(item)} entries (at most {MAX_LIST})")
            stack.extend(item.values())
        elif isinstance(item, list):
            if len(item) > MAX_LIST:
                raise ModelError(f"{label}: a list of {len(item)} items (at most {MAX_LIST})")
            stack.extend(item)
        elif isinstance(item, str) and len(item) > MAX_STRING:
            raise ModelError(f"{label}: a string of {len(item)} characters (at most {MAX_STRING})")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ModelError(f"{label}: {item} is not a finite number")
        elif is_int(item) and abs(item) > MAX_INT:
            raise ModelError(f"{label}: {item} is out of range")


def _type_hints(config_class) -> dict:
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - a plugin's annotations we cannot evaluate: generic checks only
        return {}


def _fits(value, hint) -> bool:
    """Whether a JSON value fits a simple annotation (int, float, bool, str, None, list[X], dict, unions)."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # an annotation we do not model: generic checks only


def _type_name(hint) -> str:
    if typing.get_args(hint):  # list[float], int | None: the full annotation says more than its origin
        return str(hint).replace("typing.", "").replace("NoneType", "None")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# -- weights --------------------------------------------------------------------------------------------------------
def check_weights_file(path: Path) -> None:
    """A weights file larger than the memory budget is refused before it is read."""
    from vrtk.limits import MEMORY_BUDGET_ENV, human_bytes, memory_budget

    size = path.stat().st_size
    if size > memory_budget():
        raise ModelError(f"{path}: {human_bytes(size)} of weights is more than the memory budget "
                         f"({human_bytes(memory_budget())}, {MEMORY_BUDGET_ENV})")


def check_tensors(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Shapes as the rebuilt network has them (entropy-coder tables excepted), finite values, sane quantiles."""
    wrong = [f"{k}: file {tuple(t.shape)} vs model {tuple(own[k].shape)}" for k, t in tensors.items()
             if k in own and t.shape != own[k].shape and not _is_cdf_buffer(k)]
    if wrong:
        shown = ", ".join(wrong[:4]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 4 else "")
        raise ModelError(f"{where}: tensor shapes do not fit the rebuilt model: {shown}")
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{where}: tensor {key} holds NaN or infinite values")
        if key.endswith("quantiles"):
            _check_quantiles(key, tensor, where)
        elif key.endswith("scale_table") and (tensor.numel() > MAX_SCALE_TABLE
                                             or bool((tensor.abs() > MAX_QUANTILE).any())):
            raise ModelError(f"{where}: {key} has {tensor.numel()} entries up to {float(tensor.abs().max()):g} "
                             f"(at most {MAX_SCALE_TABLE}, up to {MAX_QUANTILE:g})")


def _check_quantiles(key: str, q: torch.Tensor, where: Path) -> None:
    """EntropyBottleneck quantiles: bounded (update() builds tables as wide as their range) and ordered."""
    if q.dim() != 3 or q.shape[-1] != 3:
        raise ModelError(f"{where}: {key} has shape {tuple(q.shape)}, expected (channels, 1, 3)")
    if bool((q.abs() > MAX_QUANTILE).any()):
        raise ModelError(f"{where}: {key} reaches {float(q.abs().max()):g}; quantiles beyond +-{MAX_QUANTILE:g} "
                         "are not from a trained model (they would make entropy tables of that width)")
    if bool((q[..., 0] > q[..., 1]).any() or (q[..., 1] > q[..., 2]).any()):
        raise ModelError(f"{where}: {key} are not ordered (lower <= median <= upper)")


# -- small helpers ------------------------------------------------------------------------------------------------
def check_folder_code(folder: Path, allow_code: bool) -> None:
    """The recipe gate for ``model=<folder>``: a class the folder names needs --allow-code, as in a recipe."""
    config = read_config(Path(folder) / CONFIG_NAME)
    base = config.get("base")
    arch = base.get("arch") if isinstance(base, dict) else None
    if isinstance(arch, str):
        check_arch(arch, Path(folder) / CONFIG_NAME, allow_code)
