"""The plugin protocol: every hook a vrtk plugin may implement (pluggy, project name ``vrtk``).

Registration hooks hand the plugin a ``register`` callback; the core then applies injectors in the order the
user typed (``--plugins ecg,bm``), which pluggy's own call order cannot express. Model hooks receive the
model and let each plugin act on its own injected modules only.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("vrtk")
hookimpl = pluggy.HookimplMarker("vrtk")


@hookspec
def vrtk_register_injectors(register):
    """Register injectors: ``register(injector)`` with a :class:`vrtk.injection.Injector` instance.

    An injector has a unique ``name`` (what users type in ``--plugins``), a dataclass ``config_class`` and
    ``inject(model, config) -> list[Site]`` that replaces submodules of a CompressAI-shaped model.
    """


@hookspec
def vrtk_register_models(register):
    """Register base architectures: ``register(vrtk.zoo.ArchSpec(...))``."""


@hookspec
def vrtk_register_recipes(register):
    """Register a folder of recipe YAML files: ``register(path)``."""


@hookspec
def vrtk_set_rate(model, lmbda):
    """Set the rate (a Lagrange multiplier lambda) on this plugin's rate-dependent modules in ``model``.

    ``lmbda=None`` clears it again (``vrtk.rate.use_rate`` does so when its block ends).
    Return the number of modules that took the rate (0 or None when the plugin has none in this model).
    Called before forward, compress and decompress; the .vrtk container carries ``lmbda`` to the decoder.
    """


@hookspec
def vrtk_loss_terms(model, step):
    """Return ``{name: scalar tensor}`` added to the training loss (e.g. ECG's threshold term), or None."""


@hookspec
def vrtk_layer_stats(model):
    """Return ``{name: float}`` statistics of the last forward pass (e.g. ``ecg/g_a.2/sparsity``), or None."""


@hookspec
def vrtk_inference_modes(model, mode):
    """Apply an inference option, e.g. ``{"ecg.scale": 0.5}`` or ``{"ecg.sparse": True}``; return the keys used."""


@hookspec
def vrtk_slim(model, images, settings):
    """Remove the channels this plugin's modules (nearly) always zero: ``vrtk export --slim``.

    ``model`` is the WrappedModel (not just its network), ``images`` a list of calibration images, each (1, 3, H, W)
    padded as the codec pads them, ``settings`` a dict (``min_closed``, ``compensate``, ``lambdas``). Return
    ``(slim WrappedModel, report dict)``, or None when the model has none of this plugin's modules. The generic
    channel removal is in vrtk/slim.py, the slim architectures in vrtk/slim_arch.py, ``assemble`` in vrtk/slimming.py.
    """
