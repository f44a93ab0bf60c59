"""Finds plugins through the ``vrtk`` entry-point group and keeps what they register.

Each entry point loads on its own: one broken third-party plugin is recorded in ``load_errors`` and shown by
``vrtk plugins``, never fatal. ``VRTK_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points (for tests);
``VRTK_PLUGINS=a,b`` then loads just those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from vrtk import hookspecs
from vrtk.errors import PluginError
from vrtk.injection import Injector
from vrtk.zoo import ArchSpec, register_arch, unregister_arch

ENTRY_POINT_GROUP = "vrtk"
DISABLE_AUTOLOAD_ENV = "VRTK_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "VRTK_PLUGINS"
REGISTER_HOOKS = ("vrtk_register_injectors", "vrtk_register_models", "vrtk_register_recipes")


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "hooks": self.hooks, "registers": self.registers}


class Registry:
    """The plugin manager plus everything plugins registered (injectors, architectures, recipe folders)."""

    def __init__(self, autoload: bool | None = None):
        self.pm = pluggy.PluginManager("vrtk")
        self.pm.add_hookspecs(hookspecs)
        self.injectors: dict[str, Injector] = {}
        self.injector_owner: dict[str, str] = {}
        self.recipe_dirs: list[Path] = []
        self.archs: list[str] = []
        self.load_errors: list[dict[str, str]] = []
        self.infos: dict[str, PluginInfo] = {}
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
        wanted = {n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if autoload or ep.name in wanted:
                self._load_entry_point(ep)

    # -- loading -------------------------------------------------------------------------------------------
    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        try:
            module = ep.load()
        except Exception as exc:  # any import-time failure of a third-party package
            self._record_error(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}")
            return
        self.add_plugin(module, ep.name, dist.name if dist else None, dist.version if dist else None)

    def add_plugin(self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register one plugin object or module and run its registration hooks (used by tests too)."""
        if self.pm.has_plugin(name):
            self._record_error(name, None, "a plugin with this name is already registered")
            return
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._record_error(name, None, f"invalid plugin: {exc}")
            return
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        info = PluginInfo(name, distribution, version, hooks)
        self.infos[name] = info
        for hook_name in REGISTER_HOOKS:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name == name:
                    self._run_register(impl, hook_name, info)

    def _run_register(self, impl, hook_name: str, info: PluginInfo) -> None:
        callback = {"vrtk_register_injectors": self._register_injector,
                    "vrtk_register_models": self._register_arch,
                    "vrtk_register_recipes": self._register_recipes}[hook_name]

        def register(obj):
            label = callback(obj, info.name)
            info.registers.setdefault(hook_name.removeprefix("vrtk_register_"), []).append(label)

        try:
            impl.function(register=register)
        except Exception as exc:
            self._record_error(info.name, None, f"{hook_name} failed: {type(exc).__name__}: {exc}")

    def _register_injector(self, injector, owner: str) -> str:
        if not isinstance(injector, Injector) or not injector.name:
            raise PluginError(f"register() expects a named vrtk.injection.Injector, got {injector!r}")
        if injector.name in self.injectors:
            raise PluginError(f"injector {injector.name!r} is already registered by "
                              f"{self.injector_owner[injector.name]!r}")
        self.injectors[injector.name] = injector
        self.injector_owner[injector.name] = owner
        return injector.name

    def _register_arch(self, spec, owner: str) -> str:
        if not isinstance(spec, ArchSpec):
            raise PluginError(f"register() expects a vrtk.zoo.ArchSpec, got {spec!r}")
        register_arch(spec)
        self.archs.append(spec.name)
        return spec.name

    def _register_recipes(self, path, owner: str) -> str:
        path = Path(path)
        if not path.is_dir():
            raise PluginError(f"recipe folder {path} does not exist")
        self.recipe_dirs.append(path)
        return str(path)

    def _record_error(self, name: str, dist, message: str) -> None:
        self.load_errors.append({"plugin": name, "distribution": getattr(dist, "name", dist), "error": message})

    # -- use -----------------------------------------------------------------------------------------------
    def injector(self, name: str) -> Injector:
        if name not in self.injectors:
            failed = [e for e in self.load_errors if e["plugin"] == name]
            if failed:
                raise PluginError(f"plugin {name!r} failed to load: {failed[0]['error']}")
            known = ", ".join(sorted(self.injectors)) or "none"
            raise PluginError(f"unknown plugin {name!r}; installed: {known} (see `vrtk plugins`)")
        return self.injectors[name]

    def call(self, hook_name: str, **kwargs) -> list[tuple[str, Any]]:
        """Call a model hook on every plugin; an exception names the plugin that raised it."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def plugins_report(self) -> dict:
        return {"plugins": [i.to_dict() for i in self.infos.values()], "load_errors": list(self.load_errors)}


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Replace (or with None, reset) the process-wide registry; tests use this."""
    global _REGISTRY
    if _REGISTRY is not None and registry is not _REGISTRY:
        for arch in _REGISTRY.archs:
            unregister_arch(arch)
    _REGISTRY = registry
