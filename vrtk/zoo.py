"""The one name map of base architectures, and where their weights come from.

A base model is ``(architecture, quality | arch_kwargs, metric, weights)``. Weights are one of
``zoo`` (CompressAI's published file: torch hub cache, else a download), ``random`` (fresh init),
``default-base`` (the plain base embedded in vrtk) or a local checkpoint path. The embedded variable-rate
model ``default`` is a model folder (vrtk/embedded.py).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vrtk.checks import check_arch_kwargs
from vrtk.errors import ModelError
from vrtk.slim_arch import SLIM_BASES, build_slim
from vrtk.slim_arch import SUFFIX as SLIM_SUFFIX

# CompressAI's MSE lambdas per quality 1..8 (its training recipes; used to name rates).
COMPRESSAI_MSE_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
COMPRESSAI_MSSSIM_LAMBDAS = (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00)
ZOO_ROOT_URL = "https://compressai.s3.amazonaws.com/models/v1"
DEFAULT_MODEL_NAME = "default"  # the embedded variable-rate model (a model folder)
DEFAULT_BASE_NAME = "default-base"  # its plain base at one lambda (an architecture's weights)
ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class ArchSpec:
    """What vrtk knows about one architecture: how to build it and which sizes each quality uses."""

    name: str
    factory: Callable[..., nn.Module]
    sizes: dict[int, dict[str, int]]  # quality -> constructor kwargs (N, M)
    paper: str
    zoo_key: str | None = None  # key in compressai.zoo.image.model_urls, None = no published weights
    source: str = "compressai"

    @property
    def qualities(self) -> tuple[int, ...]:
        return tuple(sorted(self.sizes))

    def kwargs_for(self, quality: int) -> dict[str, int]:
        if quality not in self.sizes:
            lo, hi = self.qualities[0], self.qualities[-1]
            raise ModelError(f"{self.name} has qualities {lo}..{hi}, not {quality}")
        return dict(self.sizes[quality])


def _nm(table: dict[int, tuple[int, ...]]) -> dict[int, dict[str, int]]:
    return {q: dict(zip(("N", "M"), v, strict=False)) for q, v in table.items()}


def _compressai_archs() -> dict[str, ArchSpec]:
    from compressai import models as cm

    small, large = (128, 192), (192, 320)
    hyper = {q: small if q <= 5 else large for q in range(1, 9)}
    mean = {q: small if q <= 4 else large for q in range(1, 9)}
    joint = {q: (192, 192) if q <= 4 else large for q in range(1, 9)}
    cheng = {q: (128,) if q <= 3 else (192,) for q in range(1, 7)}
    specs = [
        ArchSpec("bmshj2018-factorized", cm.FactorizedPrior, _nm(hyper), "Balle 2018, factorized prior (GDN)",
                 "bmshj2018-factorized"),
        # CompressAI's zoo builds the GDN model for this name; we build the ReLU model it names.
        ArchSpec("bmshj2018-factorized-relu", cm.FactorizedPriorReLU, _nm(hyper),
                 "Balle 2018, factorized prior with ReLU (no published weights)", None),
        ArchSpec("bmshj2018-hyperprior", cm.ScaleHyperprior, _nm(hyper), "Balle 2018, scale hyperprior",
                 "bmshj2018-hyperprior"),
        ArchSpec("mbt2018-mean", cm.MeanScaleHyperprior, _nm(mean), "Minnen 2018, mean-scale hyperprior",
                 "mbt2018-mean"),
        ArchSpec("mbt2018", cm.JointAutoregressiveHierarchicalPriors, _nm(joint),
                 "Minnen 2018, joint autoregressive + hierarchical priors", "mbt2018"),
        ArchSpec("cheng2020-anchor", cm.Cheng2020Anchor, _nm(cheng), "Cheng 2020, anchor", "cheng2020-anchor"),
        ArchSpec("cheng2020-attn", cm.Cheng2020Attention, _nm(cheng), "Cheng 2020, with attention",
                 "cheng2020-attn"),
    ]
    return {s.name: s for s in specs}


_EXTRA_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> None:
    """Add an architecture (called by the plugin manager for ``vrtk_register_models``)."""
    key = canonical_name(spec.name)
    if key in all_archs():
        raise ModelError(f"architecture {spec.name!r} is already registered")
    _EXTRA_ARCHS[key] = spec


def unregister_arch(name: str) -> None:
    _EXTRA_ARCHS.pop(canonical_name(name), None)


@functools.cache
def _slim_archs() -> dict[str, ArchSpec]:
    """vrtk's own architectures: CompressAI chains with per-link widths (vrtk/slim_arch.py, export --slim)."""
    specs = {}
    for name in SLIM_BASES:
        base = _compressai_archs()[name]
        specs[name + SLIM_SUFFIX] = ArchSpec(
            name + SLIM_SUFFIX, functools.partial(build_slim, name, base.factory), base.sizes,
            f"{base.paper}, with per-layer widths (vrtk export --slim)", None, source="vrtk")
    return specs


def all_archs() -> dict[str, ArchSpec]:
    archs = dict(_compressai_archs())
    archs.update(_slim_archs())
    archs.update(_EXTRA_ARCHS)
    return archs


def canonical_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def list_archs(pattern: str | None = None) -> list[ArchSpec]:
    """Architectures whose name matches an fnmatch ``pattern`` (``-`` and ``_`` are the same)."""
    archs = all_archs()
    if not pattern:
        return list(archs.values())
    pat = canonical_name(pattern)
    if not any(c in pat for c in "*?["):
        pat = f"*{pat}*"
    return [s for n, s in archs.items() if fnmatch.fnmatchcase(n, pat)]


def get_arch(name: str) -> ArchSpec:
    archs = all_archs()
    key = canonical_name(name)
    if key in archs:
        return archs[key]
    hint = difflib.get_close_matches(key, list(archs) + [DEFAULT_MODEL_NAME, DEFAULT_BASE_NAME], n=3)
    more = f" Did you mean: {', '.join(hint)}?" if hint else ""
    raise ModelError(f"Unknown model {name!r}.{more} `vrtk models` lists them; a class of your own is "
                     "`--arch package.module:Class`.")


def registered_class(path: str):
    """The registered architecture's class ``package.module:Class`` names, if that module is already imported
    (so resolving it imports nothing); else None."""
    module_name, _, attr = path.partition(":")
    obj = sys.modules.get(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part, None) if obj is not None and part and not part.startswith("_") else None
    factories = {spec.factory for spec in all_archs().values()}
    return obj if obj is not None and obj in factories else None


def import_class(path: str) -> Callable[..., nn.Module]:
    """Import ``package.module:Class`` (the user asked for this code to run). A registered architecture's class
    that is already imported is returned without importing anything (model folders are checked for this before)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModelError(f"--arch {path!r}: expected package.module:Class")
    known = registered_class(path)
    if known is not None:
        return known
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {path!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ModelError(f"{path!r} is not an nn.Module subclass")
    return obj


@dataclass
class BaseSpec:
    """Names a base model completely: enough to rebuild it anywhere."""

    arch: str
    quality: int | None = None
    metric: str = "mse"
    weights: str = "zoo"
    arch_kwargs: dict = field(default_factory=dict)
    weights_sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaseSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of tensor names, dtypes, shapes and values (float32), independent of file format."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        # A copy: numpy() on the module's own tensor would make its storage non-resizable.
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        tensor = tensor.clone().contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def rename_compressai_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old CompressAI key names (DataParallel prefix, ParameterList entropy bottleneck, downsample)."""
    from compressai.zoo.pretrained import load_pretrained

    return load_pretrained(state)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a checkpoint without running code: safetensors, or torch.load(weights_only=True)."""
    from vrtk.limits import MEMORY_BUDGET_ENV, human_bytes, memory_budget

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size > memory_budget():
        raise ModelError(f"{path}: {human_bytes(path.stat().st_size)} is more than the memory budget "
                         f"({human_bytes(memory_budget())}, {MEMORY_BUDGET_ENV})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _owned(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: refused: vrtk reads only plain tensors from a checkpoint, and this file "
                         f"{_load_failure(exc)}. A safetensors file or a plain state_dict loads.") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "network", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: not a state_dict (expected a mapping of names to tensors, or a training "
                         "checkpoint holding one under 'state_dict' or 'network')")
    return _owned(rename_compressai_keys(obj))


def _load_failure(exc: Exception) -> str:
    """What torch.load(weights_only=True) refused, without torch's advice to retry with weights_only=False: that
    would run whatever code the file carries, and the file may come from anyone."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip().split(". ", 1)[0].rstrip(".")
            return f"holds other Python objects ({reason})"
    plain = [line for line in lines if "weights_only" not in line and not line.startswith("Weights only load")]
    return f"is not readable ({plain[0][:200] if plain else type(exc).__name__})"


def _owned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies with their own resizable storage: CompressAI resizes entropy-model buffers in place on load."""
    return {k: v.clone() for k, v in state.items()}


def zoo_url(spec: ArchSpec, metric: str, quality: int) -> str:
    from compressai.zoo.image import model_urls

    if spec.zoo_key is None:
        raise ModelError(f"{spec.name} has no published pretrained weights; use --weights PATH or --weights random")
    try:
        return model_urls[spec.zoo_key][metric][quality]
    except KeyError:
        raise ModelError(f"no pretrained {spec.name} weights for metric={metric} quality={quality}") from None


def zoo_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_zoo_state(spec: ArchSpec, metric: str, quality: int) -> dict[str, torch.Tensor]:
    """CompressAI's published weights: the torch hub cache first, then a download (unless offline)."""
    url = zoo_url(spec, metric, quality)
    cached = zoo_cache_path(url)
    if not cached.is_file():
        offline = os.environ.get("VRTK_OFFLINE", "") not in ("", "0")
        reason = "VRTK_OFFLINE is set"
        if not offline:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(cached), progress=False)
            except Exception as exc:
                reason = f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not cached.is_file():
            raise ModelError(
                f"pretrained weights for {spec.name} quality {quality} ({metric}) are not available offline: "
                f"expected {cached} ({reason}). Put the file from {url} there, or use --weights PATH, "
                f"--weights random, or the embedded base `{DEFAULT_BASE_NAME}`.")
    return read_state_dict(cached)


def default_model_dir() -> Path:
    """The embedded variable-rate model ``default``: a vrtk model folder (see vrtk/embedded.py)."""
    return ASSETS / DEFAULT_MODEL_NAME


def default_base_files() -> tuple[Path, Path]:
    return ASSETS / f"{DEFAULT_BASE_NAME}.safetensors", ASSETS / f"{DEFAULT_BASE_NAME}.json"


def default_base_info() -> dict:
    weights, meta = default_base_files()
    if not weights.is_file() or not meta.is_file():
        raise ModelError(f"the embedded base model is missing ({weights}); it is made by `vrtk export-default`")
    return json.loads(meta.read_text())


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], what: str, arch: ArchSpec | None = None,
                kwargs: dict | None = None) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape and not _is_cdf_buffer(k)]
    if not (missing or extra or shape):
        return
    lines = [f"the checkpoint does not fit {what}."]
    guess = guess_arch(state)
    if guess and canonical_name(guess) not in canonical_name(what):
        lines.append(f"Its keys and shapes look like a {guess} checkpoint.")
    elif arch is not None and infer_sizes(arch, state) and infer_sizes(arch, state) != kwargs:
        found = ", ".join(f"{k}={v}" for k, v in infer_sizes(arch, state).items())
        lines.append(f"Its sizes are {found}: drop --quality, or pass --arch-kwargs with these sizes.")
    for title, items in (("missing keys", missing), ("unexpected keys", extra), ("size mismatches", shape)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            lines.append(f"{title}: {shown}")
    raise ModelError("\n  ".join(lines))


def _is_cdf_buffer(key: str) -> bool:
    # Entropy-model tables are resized by CompressionModel.load_state_dict, so their size may differ.
    return key.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Which known architecture, at the sizes the checkpoint implies, has exactly these keys and shapes."""
    for spec in _compressai_archs().values():
        sizes = infer_sizes(spec, state)
        if not sizes:
            continue
        try:
            own = spec.factory(**sizes).state_dict()
        except Exception:  # sizes this architecture cannot be built with
            continue
        if set(own) == set(state) and all(own[k].shape == state[k].shape for k in own if not _is_cdf_buffer(k)):
            return spec.name
    return None


def infer_sizes(spec: ArchSpec, state: dict[str, torch.Tensor]) -> dict[str, int] | None:
    """N (and M) from a checkpoint, the way CompressAI's from_state_dict does."""
    try:
        if spec.name.startswith("cheng2020"):
            return {"N": state["g_a.0.conv1.weight"].size(0)}
        return {"N": state["g_a.0.weight"].size(0), "M": state["g_a.6.weight"].size(0)}
    except KeyError:
        return None


def build_base(spec: BaseSpec) -> nn.Module:
    """Build the base model a ``BaseSpec`` names, with its weights, in eval mode."""
    if spec.arch == DEFAULT_BASE_NAME:
        return _build_default_base(spec)
    if spec.arch == DEFAULT_MODEL_NAME:
        raise ModelError(f"`{DEFAULT_MODEL_NAME}` is the embedded variable-rate model (a model folder with the bm "
                         f"plugin), not a base architecture; its plain base is `{DEFAULT_BASE_NAME}`. (Model folders "
                         f"made before vrtk 0.2 name the old embedded base, which is no longer shipped.)")
    from vrtk.limits import allocation_failures, check_build_memory

    state = None
    if not isinstance(spec.arch_kwargs, dict):
        raise ModelError("arch_kwargs must be an object of constructor arguments, not "
                         f"{type(spec.arch_kwargs).__name__}")
    if ":" in spec.arch:
        factory, arch_name = import_class(spec.arch), spec.arch
        kwargs = dict(spec.arch_kwargs)
    else:
        arch = get_arch(spec.arch)
        factory, arch_name = arch.factory, arch.name
        check_arch_kwargs(spec.arch_kwargs, f"{arch.name} arch_kwargs")  # sizes no real model reaches, refused
        if spec.weights not in ("zoo", "random"):
            state = read_state_dict(spec.weights)
        if spec.arch_kwargs:
            kwargs = dict(spec.arch_kwargs)
        elif spec.quality is not None:
            kwargs = arch.kwargs_for(spec.quality)
        elif state is not None and infer_sizes(arch, state):
            kwargs = infer_sizes(arch, state)
        else:
            kwargs = arch.kwargs_for(arch.qualities[-1])
        if spec.weights == "zoo":
            if spec.quality is None:
                raise ModelError(f"--weights zoo needs --quality ({arch.qualities[0]}..{arch.qualities[-1]})")
            state = load_zoo_state(arch, spec.metric, spec.quality)
            kwargs = infer_sizes(arch, state) or kwargs
    try:
        check_build_memory(factory, kwargs, f"{arch_name} {kwargs}")
        with allocation_failures(f"building {arch_name} {kwargs}"):
            model = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch_name} with {kwargs}: {exc}") from None
    if spec.weights not in ("zoo", "random") and state is None:
        state = read_state_dict(spec.weights)
    if state is not None:
        described = f"{arch_name} {json.dumps(kwargs)}"
        _check_fits(model, state, described, None if ":" in spec.arch else get_arch(spec.arch), kwargs)
        model.load_state_dict(state)
        spec.weights_sha256 = state_dict_sha256(model.state_dict())
    spec.arch_kwargs = dict(kwargs)
    return model.eval()


def _build_default_base(spec: BaseSpec) -> nn.Module:
    info = default_base_info()
    weights, _ = default_base_files()
    from safetensors.torch import load_file

    arch = get_arch(info["arch"])
    model = arch.factory(**info["arch_kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in load_file(str(weights)).items()}
    _check_fits(model, state, f"the embedded base ({info['arch']})")
    model.load_state_dict(state)
    spec.arch_kwargs = dict(info["arch_kwargs"])
    spec.metric = info.get("metric", "mse")
    spec.weights = DEFAULT_BASE_NAME
    spec.weights_sha256 = state_dict_sha256(model.state_dict())
    return model.eval()


def half_parameters(net: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with the learned float parameters of ``net`` in fp16 and every buffer as it is: fp16 would turn
    CompressAI's likelihood floor (1e-9) into 0, and entropy-coder tables must stay exact. Loading casts back."""
    learned = {name for name, _ in net.named_parameters()}
    return {k: v.half() if k in learned and v.is_floating_point() else v for k, v in tensors.items()}
