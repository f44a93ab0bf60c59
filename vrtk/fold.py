"""Fold rate modulators into the convolutions beside them: a variable-rate model at one lambda becomes a plain
fixed-rate model of the base architecture, with the same outputs up to float rounding.

A modulator after an encoder multiplies the encoder's last convolution's output channels by a vector, which is
the same as scaling that convolution's weights and bias per output channel; the demodulator before a decoder
scales the decoder's first convolution's input channels::

    Sequential(g_a, Modulate m)    ->  g_a with  W[o] *= m[o],  b[o] *= m[o]      (Conv2d: W is (out, in, k, k))
    Sequential(Demodulate d, g_s)  ->  g_s with  W[:, i] *= d[i]   (Conv2d)  or  W[i] *= d[i]  (ConvTranspose2d)

The folded model needs no plugin and no rate: it is what ``default-base`` is made of, and a way to hand one
operating point of a variable-rate model to a tool that knows only CompressAI models.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vrtk.errors import ModelError
from vrtk.injection import Adapter, replace_submodule
from vrtk.model import PluginUse, WrappedModel
from vrtk.modulation import ChannelModulator
from vrtk.plugin_manager import get_registry
from vrtk.rate import check_lambda, use_rate
from vrtk.zoo import DEFAULT_BASE_NAME, BaseSpec, default_base_info

CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _edge_conv(module: nn.Module, last: bool) -> nn.Module:
    """The convolution that is ``module``'s last (or first) operation, looking through nested Sequentials and,
    on the output side, through adapters whose output is their base layer's (an input gate)."""
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1] if last else module[0]
    if last and isinstance(module, Adapter) and module.output_is_base_layers:
        module = module.base_layer
    if not isinstance(module, CONVS) or (module.groups != 1):
        raise ModelError(f"cannot fold a modulator next to {type(module).__name__}: only a plain, ungrouped "
                         "convolution can absorb a per-channel scale")
    return module


@torch.no_grad()
def _scale_channels(conv: nn.Module, vector: torch.Tensor, output: bool) -> None:
    """Multiply a convolution's output (or input) channels by ``vector``: weight dim 0 is out for Conv2d and in for
    ConvTranspose2d; a bias scales with the output only."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    shape = [1] * conv.weight.dim()
    shape[int(transposed == output)] = -1
    conv.weight.mul_(vector.view(shape))
    if output and conv.bias is not None:
        conv.bias.mul_(vector)


def fold_modulators(net: nn.Module, lmbda: float, registry=None) -> nn.Module:
    """A copy of ``net`` with every ``Sequential(encoder, modulator)`` / ``Sequential(demodulator, decoder)`` pair
    folded at ``lmbda`` into the encoder / decoder. Refuses rate modules it cannot fold (they would be lost)."""
    folded = copy.deepcopy(net)
    with use_rate(folded, lmbda, registry):
        pairs = [(path, module) for path, module in folded.named_modules()
                 if isinstance(module, nn.Sequential) and len(module) == 2
                 and any(isinstance(m, ChannelModulator) for m in module)]
        for path, (first, second) in pairs:
            if isinstance(second, ChannelModulator) and second.role == "modulate":
                _scale_channels(_edge_conv(first, last=True), second.scale().to(torch.float32), output=True)
                replace_submodule(folded, path, first)
            elif isinstance(first, ChannelModulator) and first.role == "demodulate":
                _scale_channels(_edge_conv(second, last=False), first.scale().to(torch.float32), output=False)
                replace_submodule(folded, path, second)
            else:
                raise ModelError(f"{path}: a modulator in an unexpected place; cannot fold it")
    left = [name for name, m in folded.named_modules() if isinstance(m, ChannelModulator)]
    if left:
        raise ModelError(f"cannot fold the rate modules at {', '.join(left)}: they are not beside a convolution")
    folded.update(force=True)
    return folded.eval()


def folded_model(wrapped, lmbda: float, registry=None):
    """A fixed-rate WrappedModel at ``lmbda``: the rate plugins folded away, other plugins (gates) kept, the base
    named by its registered architecture so the result loads without the model it came from."""
    registry = registry or get_registry()
    if not wrapped.variable_rate:
        raise ModelError("only a variable-rate model has modulators to fold")
    lmbda = check_lambda(lmbda, wrapped.lambdas)
    arch, sizes = real_architecture(wrapped)
    kept = [PluginUse(p.name, dict(p.config), p.version) for p in wrapped.plugins
            if not registry.injector(p.name).rate_dependent]
    net = fold_modulators(wrapped.net, lmbda, registry)
    return WrappedModel(net=net, base=BaseSpec(arch=arch, arch_kwargs=sizes, metric=wrapped.metric, weights="random"),
                        plugins=kept, lambdas=[lmbda], metric=wrapped.metric,
                        extra={**wrapped.extra, "folded_at_lambda": lmbda})


def real_architecture(wrapped) -> tuple[str, dict]:
    """The registered architecture and sizes under a model, also when it was trained from the embedded base."""
    if wrapped.base.arch == DEFAULT_BASE_NAME:
        info = default_base_info()
        return info["arch"], dict(info["arch_kwargs"])
    if ":" in wrapped.base.arch:
        raise ModelError(f"{wrapped.base.arch}: folding writes a registered architecture, not a class path")
    return wrapped.base.arch, dict(wrapped.base.arch_kwargs)
