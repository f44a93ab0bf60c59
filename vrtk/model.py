"""A wrapped model: a CompressAI-shaped base plus plugin modules, and its checkpoint on disk.

A checkpoint is a folder (like peft's adapters)::

    config.json        base spec (arch, sizes, weights source and hash), plugins in order with configs and
                       versions, the trained rate range, the vrtk version, and whether the weights are a delta
    model.safetensors  only what plugins added or fine-tuning changed (delta), or every tensor (full)

Loading rebuilds the base, checks its hash, re-injects the plugins in order, loads strictly, then runs
``update(force=True)`` so the entropy coder's tables match the weights.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vrtk import __version__, folder_check
from vrtk.errors import ModelError, PluginError
from vrtk.fileio import write_json_atomic, write_with_atomic
from vrtk.folder_check import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME
from vrtk.injection import Site, adapters, freeze_all_but_adapters
from vrtk.plugin_manager import Registry, get_registry
from vrtk.zoo import (
    DEFAULT_BASE_NAME,
    DEFAULT_MODEL_NAME,
    BaseSpec,
    build_base,
    default_base_info,
    default_model_dir,
    state_dict_sha256,
)


@dataclass
class PluginUse:
    name: str
    config: dict = field(default_factory=dict)
    version: str | None = None


@dataclass
class WrappedModel:
    """The network plus what is needed to rebuild, save and explain it."""

    net: nn.Module
    base: BaseSpec
    plugins: list[PluginUse] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)  # trained rate range; [] = fixed-rate model
    metric: str = "mse"
    base_state: dict[int, torch.Tensor] | None = None  # storage pointer -> base value at wrap time
    extra: dict = field(default_factory=dict)

    @property
    def variable_rate(self) -> bool:
        return len(self.lambdas) > 1

    def middle_lambda(self) -> float | None:
        """The geometric middle of the trained range (a sensible rate when none is asked for)."""
        if not self.lambdas:
            return None
        import math

        return math.exp((math.log(min(self.lambdas)) + math.log(max(self.lambdas))) / 2)

    def config(self, weights_kind: str) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "vrtk_version": __version__,
            "base": self.base.to_dict(),
            "plugins": [{"name": p.name, "config": p.config, "version": p.version} for p in self.plugins],
            "sites": [s.to_dict() for s in self.sites],
            "rate": {"lambdas": list(self.lambdas), "metric": self.metric},
            "weights": weights_kind, "extra": self.extra,
        }

    def fingerprint(self) -> str:
        """Hash of every tensor the decoder depends on: a .vrtk file names the model it needs by this."""
        return state_dict_sha256(self.net.state_dict())

    def to(self, device) -> WrappedModel:
        self.net.to(device)
        return self


def wrap(base: BaseSpec, plugins: list[str] | None = None, plugin_configs: dict[str, dict] | None = None,
         registry: Registry | None = None, net: nn.Module | None = None) -> WrappedModel:
    """Build the base and let each named plugin inject its modules, in the order given."""
    net = net if net is not None else build_base(base)
    base_state = {v.data_ptr(): v.detach().clone() for v in net.state_dict().values() if v.numel()}
    wrapped = WrappedModel(net=net, base=base, base_state=base_state, metric=base.metric)
    return extend(wrapped, plugins or [], plugin_configs, registry=registry)


def extend(wrapped: WrappedModel, plugins: list[str], plugin_configs: dict[str, dict] | None = None,
           registry: Registry | None = None) -> WrappedModel:
    """Inject more plugins into an already wrapped model (e.g. BM on top of an ECG-finetuned model)."""
    registry = registry or get_registry()
    plugin_configs = {k: v for k, v in (plugin_configs or {}).items()
                      if k not in [p.name for p in wrapped.plugins]}
    for name in plugins:
        if name in [p.name for p in wrapped.plugins]:
            raise PluginError(f"plugin {name!r} is listed twice")
        injector = registry.injector(name)
        config = injector.make_config(plugin_configs.pop(name, None))
        earlier = _modules_of(wrapped.net, wrapped.sites)
        sites = injector.inject(wrapped.net, config)
        _follow_moves(wrapped.net, earlier)
        if len(wrapped.lambdas) <= 1 and injector.rate_range(config):
            wrapped.lambdas = sorted(float(x) for x in injector.rate_range(config))
        info = registry.infos.get(registry.injector_owner[name])
        wrapped.plugins.append(PluginUse(name, asdict(config), info.version if info else None))
        wrapped.sites.extend(sites)
    if plugin_configs:
        raise PluginError(f"configuration given for plugins not in the list: {sorted(plugin_configs)}")
    return wrapped


def _modules_of(net: nn.Module, sites: list[Site]) -> dict[int, Site]:
    """Site of each module an earlier plugin changed, by module identity."""
    modules = dict(net.named_modules())
    return {id(modules[s.path]): s for s in sites if s.path in modules}


def _follow_moves(net: nn.Module, sites_by_module: dict[int, Site]) -> None:
    """A later plugin may wrap a parent of an earlier site (bm wraps g_a: g_a.2 becomes g_a.0.2): re-read paths."""
    for name, module in net.named_modules():
        site = sites_by_module.get(id(module))
        if site is not None:
            site.path = name


def plan(base: BaseSpec, plugins: list[str], plugin_configs: dict[str, dict] | None = None,
         registry: Registry | None = None) -> list[tuple[str, list[str]]]:
    """What each plugin would change, without changing anything (``--dry-run``)."""
    registry = registry or get_registry()
    net = build_base(base)
    plugin_configs = plugin_configs or {}
    out = []
    for name in plugins:
        injector = registry.injector(name)
        config = injector.make_config(plugin_configs.get(name))
        out.append((name, injector.plan(net, config)))
        injector.inject(net, config)  # later plugins see the earlier ones, as in a real wrap
    return out


def _delta_state(wrapped: WrappedModel) -> dict[str, torch.Tensor]:
    """Tensors that are not the base's own, unchanged tensors (tracked by storage, so renames don't matter)."""
    state = wrapped.net.state_dict()
    if wrapped.base_state is None:
        return state
    delta = {}
    for key, tensor in state.items():
        original = wrapped.base_state.get(tensor.data_ptr()) if tensor.numel() else None
        if original is None or original.shape != tensor.shape or not torch.equal(original, tensor):
            delta[key] = tensor
    return delta


def save_model(wrapped: WrappedModel, out_dir: str | os.PathLike, full: bool | None = None,
               half: bool = False) -> Path:
    """Write the checkpoint folder atomically, file by file; a delta unless the base cannot be rebuilt.

    ``half`` stores the learned parameters in fp16 (half the bytes; buffers stay exact). The loaded model is fp32
    with those rounded values, so encoder and decoder that load the same folder still agree bit for bit."""
    from safetensors.torch import save_file

    from vrtk.zoo import half_parameters

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if full is None:
        full = wrapped.base.weights == "random" or wrapped.base_state is None
    tensors = wrapped.net.state_dict() if full else _delta_state(wrapped)
    if half:
        tensors = half_parameters(wrapped.net, tensors)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config = wrapped.config("full" if full else "delta")
    config["parameters_dtype"] = "float16" if half else "float32"
    write_with_atomic(out_dir / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(out_dir / CONFIG_NAME, config)
    return out_dir


def is_model_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The model folder a name means: ``default`` (the embedded variable-rate model) or a folder path."""
    if str(name_or_path) == DEFAULT_MODEL_NAME:
        return default_model_dir()
    return Path(name_or_path) if is_model_dir(name_or_path) else None


def load_model(path: str | os.PathLike, registry: Registry | None = None, device: str | None = None,
               allow_code: bool = False) -> WrappedModel:
    """Rebuild a saved model: base (hash checked), plugins re-injected in order, weights loaded strictly.

    The folder may come from anyone: every field and size is checked before anything is built, and a class the
    folder names (``package.module:Class``) is imported only with ``allow_code`` (see vrtk/folder_check.py)."""
    from safetensors.torch import load_file


    path = Path(path)
    if not is_model_dir(path):
        raise ModelError(f"{path}: not a vrtk model folder (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    config = folder_check.read_config(path / CONFIG_NAME)
    folder_check.check_config(config, path / CONFIG_NAME, allow_code, registry)
    folder_check.check_weights_file(path / WEIGHTS_NAME)
    base = BaseSpec.from_dict(config["base"])
    full = config.get("weights") == "full"
    expected_hash = base.weights_sha256
    build_spec = BaseSpec.from_dict({**config["base"], "weights": "random"}) if full else base
    if not full and base.weights == "random":
        raise ModelError(f"{path}: a delta over random weights cannot be rebuilt")
    net = build_base(build_spec)
    if not full and expected_hash and build_spec.weights_sha256 != expected_hash:
        raise ModelError(f"{path}: the base weights ({base.weights}) differ from those this model was made "
                         f"from (sha256 {build_spec.weights_sha256[:12]} vs {expected_hash[:12]})")
    base.weights_sha256 = expected_hash
    plugins = [p["name"] for p in config.get("plugins", [])]
    configs = {p["name"]: p.get("config", {}) for p in config.get("plugins", [])}
    try:
        wrapped = wrap(base, plugins, configs, registry=registry, net=net)
    except (TypeError, ValueError, LookupError, AttributeError) as exc:  # a setting the plugin did not check
        raise ModelError(f"{path / CONFIG_NAME}: the plugins {plugins} cannot be set up with these settings "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        tensors = {k: v.clone() for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
    except Exception as exc:
        raise ModelError(f"{path / WEIGHTS_NAME}: unreadable weights ({exc})") from None
    own = wrapped.net.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors)) if full else []
    if unexpected or missing:
        raise ModelError(f"{path}: weights do not fit the rebuilt model; unexpected: {unexpected[:8]}, "
                         f"missing: {missing[:8]}")
    folder_check.check_tensors(own, tensors, path / WEIGHTS_NAME)
    _fit_buffers(wrapped.net, tensors)
    merged = {**wrapped.net.state_dict(), **tensors}
    wrapped.net.load_state_dict(merged, strict=True)
    wrapped.lambdas = [float(x) for x in config.get("rate", {}).get("lambdas", [])]
    wrapped.metric = config.get("rate", {}).get("metric", base.metric)
    wrapped.extra = config.get("extra", {})
    _update_tables(wrapped.net, path)
    wrapped.net.eval()
    if device:
        wrapped.net.to(device)
    return wrapped


def _update_tables(net: nn.Module, path: Path) -> None:
    """Build the entropy coder's tables from the loaded weights; a failure names the folder, not a traceback."""
    from vrtk.limits import allocation_failures

    try:
        with allocation_failures(f"building the entropy tables of {path}"):
            net.update(force=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{path}: the entropy coder's tables cannot be built from these weights ({exc})") from None


def _fit_buffers(net: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give buffers the size of the incoming tensors (entropy-coder tables change size with the weights)."""
    for key, tensor in tensors.items():
        module_path, _, name = key.rpartition(".")
        module = net.get_submodule(module_path) if module_path else net
        buffer = module._buffers.get(name)
        if buffer is not None and buffer.shape != tensor.shape:
            module._buffers[name] = torch.empty_like(tensor, device=buffer.device)


def resolve_model(name_or_path: str, quality: int | None = None, metric: str = "mse", weights: str = "zoo",
                  arch_kwargs: dict | None = None, registry: Registry | None = None,
                  allow_code: bool = False) -> WrappedModel:
    """A model folder, ``default``, ``default-base``, a zoo name, or ``package.module:Class`` -> a WrappedModel.

    ``package.module:Class`` given here is imported (the caller named it); a class named inside a model folder is
    imported only with ``allow_code``."""
    folder = model_folder(name_or_path)
    if folder is not None:
        return load_model(folder, registry=registry, allow_code=allow_code)
    spec = BaseSpec(arch=name_or_path, quality=quality, metric=metric, weights=weights,
                    arch_kwargs=dict(arch_kwargs or {}))
    wrapped = wrap(spec, [], registry=registry)
    if name_or_path == DEFAULT_BASE_NAME:
        wrapped.lambdas = [float(default_base_info()["lambda"])]
    wrapped.net.update(force=True)
    return wrapped


def trainable_setup(wrapped: WrappedModel, train: str) -> None:
    """``plugins``: only injected modules; ``all``: everything; ``decoder``: plugins + g_s; else a regex."""
    import re

    net = wrapped.net
    if train == "all":
        for p in net.parameters():
            p.requires_grad_(True)
        return
    freeze_all_but_adapters(net)
    if train == "plugins":
        if not adapters(net):
            raise PluginError("train=plugins but the model has no plugin modules")
        return
    pattern = r"g_s\..*" if train == "decoder" else train
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise PluginError(f"train={train!r} is not a valid regex: {exc}") from None
    hit = False
    for name, p in net.named_parameters():
        if regex.fullmatch(name):
            p.requires_grad_(True)
            hit = True
    if not hit and train != "decoder":
        raise PluginError(f"train={train!r} matches no parameter")
