"""Inference options that plugins understand (e.g. ``ecg.scale`` or ``ecg.sparse``), applied through a hook.

Every option given to the encoder travels in the .vrtk header and the decoder applies the same values. For an
option that changes what the decoder computes (``ecg.scale``) that is required; for one that is only about speed
(``ecg.sparse``: same output, less work) it costs a few header bytes and makes the decoder take the same path.
"""

from __future__ import annotations

from vrtk.errors import PluginError


def apply_options(net, options: dict | None, registry=None) -> None:
    """Hand ``options`` to the plugins; an option no plugin of this model takes is an error, not silence."""
    if not options:
        return
    from vrtk.plugin_manager import get_registry

    registry = registry or get_registry()
    used: set[str] = set()
    for _, keys in registry.call("vrtk_inference_modes", model=net, mode=dict(options)):
        used.update(keys or [])
    unknown = sorted(set(options) - used)
    if unknown:
        raise PluginError(f"no plugin of this model takes the option(s) {unknown}")
