"""Module surgery shared by all plugins: find submodules by name or regex, replace them, and freeze by structure.

Injected modules subclass :class:`Adapter` and keep the module they wrap as ``base_layer`` (as in peft), so
their own parameters are known without guessing from names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from torch import nn

from vrtk.errors import PluginError


class Adapter(nn.Module):
    """Base class of every module a plugin injects."""

    plugin_name: str = "?"
    # True when forward(x) == base_layer(f(x)) for some f: the output is the base layer's own, so a per-channel
    # scale after it can be folded into the base layer's weights (vrtk/fold.py).
    output_is_base_layers: bool = False

    def adapter_params(self) -> Iterator[nn.Parameter]:
        """Parameters this adapter added (not those of the wrapped ``base_layer``)."""
        base = getattr(self, "base_layer", None)
        skip = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
        for param in self.parameters():
            if id(param) not in skip:
                yield param

    def added_param_count(self) -> int:
        return sum(p.numel() for p in self.adapter_params())


@dataclass
class Site:
    """One place a plugin changed: shown by ``vrtk wrap`` and saved in the model config."""

    path: str
    plugin: str
    kind: str
    added_params: int

    def to_dict(self) -> dict:
        return {"path": self.path, "plugin": self.plugin, "kind": self.kind, "added_params": self.added_params}


class Injector:
    """What a plugin registers. Subclasses set ``name``, ``config_class`` and implement ``inject``."""

    name: str = ""
    description: str = ""
    config_class: type = object
    rate_dependent: bool = False  # True for modulators: the model then needs a rate to run

    def make_config(self, values: dict | None = None):
        values = dict(values or {})
        fields = getattr(self.config_class, "__dataclass_fields__", {})
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise PluginError(f"plugin {self.name!r}: unknown config keys {unknown}; known: {sorted(fields)}")
        return self.config_class(**values)

    def rate_range(self, config) -> list[float] | None:
        """Lambdas a rate-dependent plugin is configured for (a fresh wrap can then be run at a rate)."""
        return None

    def plan(self, model: nn.Module, config) -> list[str]:
        """Module paths ``inject`` would change (for ``vrtk wrap --dry-run``)."""
        raise NotImplementedError

    def inject(self, model: nn.Module, config) -> list[Site]:
        raise NotImplementedError


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise PluginError(f"model has no submodule {path!r}") from None


def replace_submodule(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``path`` was; returns the old module."""
    parent_path, _, leaf = path.rpartition(".")
    parent = get_submodule(model, parent_path) if parent_path else model
    old = getattr(parent, leaf)
    setattr(parent, leaf, new)
    return old


def match_modules(model: nn.Module, targets: Iterable[str], types: tuple[type, ...] = (nn.Module,),
                  exclude: Iterable[str] = ()) -> list[str]:
    """Paths of modules of ``types`` whose full name equals a target or fully matches it as a regex."""
    targets, exclude = list(targets), list(exclude)
    found = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, types) or _inside_adapter_base(model, name):
            continue
        if any(_name_matches(name, t) for t in targets) and not any(_name_matches(name, e) for e in exclude):
            found.append(name)
    if not found:
        raise PluginError(f"no module matches targets {targets}" + (f" minus {exclude}" if exclude else ""))
    return found


def _name_matches(name: str, pattern: str) -> bool:
    if name == pattern:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _inside_adapter_base(model: nn.Module, name: str) -> bool:
    """True for ``x.base_layer``: the wrapped layer itself is not a new target."""
    return name.endswith(".base_layer") or ".base_layer." in name


def adapters(model: nn.Module, cls: type = Adapter) -> list[tuple[str, Adapter]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def freeze_all_but_adapters(model: nn.Module) -> None:
    """Base frozen, every injected module trainable: selected by structure, not by name prefix."""
    for param in model.parameters():
        param.requires_grad_(False)
    for _, adapter in adapters(model):
        for param in adapter.adapter_params():
            param.requires_grad_(True)


def param_summary(model: nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "all_params": total,
            "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0}


def format_param_summary(summary: dict) -> str:
    return (f"trainable params: {summary['trainable_params']:,} || all params: {summary['all_params']:,} "
            f"|| trainable%: {summary['trainable_percent']:.4f}")
