"""The plugin system: entry-point discovery, broken plugins, hook validation, registration rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import run_cli

from vrtk.errors import PluginError
from vrtk.hookspecs import hookimpl
from vrtk.injection import Injector
from vrtk.plugin_manager import Registry, set_registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "plugins" / "examples" / "vrtk-example-plugin"


def test_shipped_plugins_come_through_entry_points():
    registry = Registry(autoload=True)
    infos = registry.plugins_report()["plugins"]
    shipped = {p["name"]: p for p in infos if p["distribution"] == "vrtk"}
    assert {"ecg", "bm", "gain"} <= set(shipped), registry.load_errors
    assert "vrtk_register_injectors" in shipped["ecg"]["hooks"]
    assert shipped["bm"]["registers"]["injectors"] == ["bm"]


def test_autoload_can_be_disabled_and_plugins_picked(monkeypatch):
    monkeypatch.setenv("VRTK_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry().injectors == {}
    monkeypatch.setenv("VRTK_PLUGINS", "bm")
    assert set(Registry().injectors) == {"bm"}


def test_misspelled_hook_is_reported_not_silent():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def vrtk_register_injector(register):  # missing the final "s"
        pass

    module.vrtk_register_injector = vrtk_register_injector
    registry = Registry(autoload=False)
    registry.add_plugin(module, "typo")
    assert "typo" not in registry.infos
    assert "vrtk_register_injector" in registry.load_errors[0]["error"]


class _Dummy(Injector):
    name = "dummy"
    config_class = type("Cfg", (), {"__dataclass_fields__": {}})


def test_duplicate_injector_names_are_refused():
    plugin_a, plugin_b = types.SimpleNamespace(), types.SimpleNamespace()
    plugin_a.vrtk_register_injectors = hookimpl(lambda register: register(_Dummy()))
    plugin_b.vrtk_register_injectors = hookimpl(lambda register: register(_Dummy()))
    registry = Registry(autoload=False)
    registry.add_plugin(plugin_a, "a")
    registry.add_plugin(plugin_b, "b")
    assert registry.injector_owner["dummy"] == "a"
    assert "already registered by 'a'" in registry.load_errors[0]["error"]


def test_register_checks_types():
    plugin = types.SimpleNamespace(vrtk_register_injectors=hookimpl(lambda register: register("not an injector")))
    registry = Registry(autoload=False)
    registry.add_plugin(plugin, "bad")
    assert "expects a named vrtk.injection.Injector" in registry.load_errors[0]["error"]


def test_a_plugin_raising_inside_a_hook_is_named():
    def boom(model, step):
        raise RuntimeError("kaboom")

    plugin = types.SimpleNamespace(vrtk_loss_terms=hookimpl(boom))
    registry = Registry(autoload=False)
    registry.add_plugin(plugin, "exploder")
    with pytest.raises(PluginError, match="'exploder' failed in vrtk_loss_terms: RuntimeError: kaboom"):
        registry.call("vrtk_loss_terms", model=None, step=0)


def test_unknown_plugin_is_a_clear_error():
    code, _, err = run_cli("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs",
                           '{"N":8,"M":12}', "--plugins", "nosuch")
    assert code == 2 and "unknown plugin 'nosuch'" in err


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, timeout=300)


def _vrtk_subprocess(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VRTK_OFFLINE": "1", **(env_extra or {})}
    env.pop("VRTK_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "vrtk", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture
def broken_plugin_dist(tmp_path):
    """An installed distribution whose vrtk entry point fails to import."""
    site = tmp_path / "site"
    dist = site / "vrtk_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vrtk-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vrtk]\nbroken = vrtk_broken_module_that_raises\n")
    (site / "vrtk_broken_module_that_raises.py").write_text("raise ImportError('this plugin is broken')\n")
    return site


def test_broken_third_party_plugin_is_reported_and_skipped(broken_plugin_dist):
    env = {"PYTHONPATH": str(broken_plugin_dist)}
    listing = _vrtk_subprocess("plugins", "--json", env_extra=env)
    assert listing.returncode == 0, listing.stderr
    report = json.loads(listing.stdout)
    errors = {e["plugin"]: e for e in report["load_errors"]}
    assert "this plugin is broken" in errors["broken"]["error"]
    assert errors["broken"]["distribution"] == "vrtk-broken"
    assert {"ecg", "bm"} <= {p["name"] for p in report["plugins"]}
    assert _vrtk_subprocess("--help", env_extra=env).returncode == 0
    wrapped = _vrtk_subprocess("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs",
                               '{"N":8,"M":12}', "--plugins", "broken", env_extra=env)
    assert wrapped.returncode == 2 and "'broken' failed to load" in wrapped.stderr


@pytest.fixture
def example_plugin_installed():
    _pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    set_registry(None)
    yield
    _pip("uninstall", "-y", "vrtk-example-plugin")
    set_registry(None)


def test_third_party_package_is_discovered_and_usable(example_plugin_installed, tmp_path):
    listing = _vrtk_subprocess("plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["se"]["distribution"] == "vrtk-example-plugin"
    assert plugins["se"]["registers"] == {"injectors": ["se"]}
    out = tmp_path / "se-model"
    wrapped = _vrtk_subprocess("wrap", "bmshj2018-hyperprior", "--weights", "random", "--arch-kwargs",
                               '{"N":8,"M":12}', "--plugins", "se", "-o", str(out), "--json")
    assert wrapped.returncode == 0, wrapped.stderr
    facts = json.loads(wrapped.stdout)
    assert facts["sites"] == [{"path": "g_s", "plugin": "se", "kind": "se-gate", "added_params": 12 * 12 + 12}]
    assert facts["trainable_params"] == 12 * 12 + 12
    assert json.loads((out / "config.json").read_text())["plugins"][0]["name"] == "se"
