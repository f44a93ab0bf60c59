"""Multiply-accumulates (MACs, not FLOPs: 1 MAC = 2 FLOPs) of the real encode and decode paths.

Counted with forward hooks while ``compress`` and ``decompress`` run, so every architecture is measured on the
path it really executes. For each convolution both numbers are exact:

* dense:      Conv2d           C_out * C_in/g * k_h * k_w * H_out * W_out
              ConvTranspose2d  C_in * C_out/g * k_h * k_w * H_in * W_in
              (the convention of ``torch.utils.flop_counter``, which counts 2 FLOPs per MAC)
* effective:  Conv2d           C_out/g * sum(conv2d((x != 0), ones(g, C_in/g, k_h, k_w), stride, padding, dilation))
              ConvTranspose2d  C_out/g * sum(conv_transpose2d((x != 0), ones(C_in, 1, k_h, k_w), stride, padding,
                                                              output_padding, groups=g, dilation))
              i.e. for every output element, the (input element, tap) products whose input is non-zero. Padding
              taps (Conv2d) and taps cropped away by ``padding`` (ConvTranspose2d) are no work either, so on an
              input without zeros ``effective`` is slightly below ``dense`` at the borders.

Zeros from any source (ReLU in h_a/h_s, or a gating plugin) are credited the same way, so the base model's own
zeros count for the baseline too. Both formulas are tested against brute-force loops over output positions and
taps. GDN/IGDN is a 1x1 convolution over channels (C*C per pixel, dense). Any module with a
``vrtk_macs(inputs, output)`` method returning ``(dense, effective)`` adds that too (gating plugins count their own
overhead this way). ``F.conv2d`` calls made outside every counted module -- the autoregressive context model of
mbt2018 / cheng2020, which ``compress``/``decompress`` run position by position on ``context_prediction.weight`` --
are caught by a TorchFunctionMode and counted the same way under ``functional.conv2d``. thop is not used: it
overcounts stride-2 ConvTranspose2d and ignores GDN.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class MacCount:
    dense: int = 0
    effective: int = 0
    per_layer: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, name: str, dense: int, effective: int) -> None:
        self.dense += dense
        self.effective += effective
        d, e = self.per_layer.get(name, (0, 0))
        self.per_layer[name] = (d + dense, e + effective)


def conv2d_macs(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    k_h, k_w = conv.kernel_size
    groups = conv.groups
    dense = out.shape[0] * conv.out_channels * (conv.in_channels // groups) * k_h * k_w * out.shape[-2] * out.shape[-1]
    nz = (x != 0).to(torch.float64)
    ones = torch.ones(groups, conv.in_channels // groups, k_h, k_w, dtype=torch.float64, device=x.device)
    padding = conv.padding
    if conv.padding_mode != "zeros":  # reflect/replicate/circular pad the mask exactly as the input
        nz = F.pad(nz, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    taps = F.conv2d(nz, ones, stride=conv.stride, padding=padding, dilation=conv.dilation, groups=groups)
    effective = int(round(float(taps.sum()))) * (conv.out_channels // groups)
    return int(dense), effective


def conv_transpose2d_macs(conv: nn.ConvTranspose2d, x: torch.Tensor) -> tuple[int, int]:
    k_h, k_w = conv.kernel_size
    groups = conv.groups
    dense = x.numel() * (conv.out_channels // groups) * k_h * k_w
    nz = (x != 0).to(torch.float64)
    ones = torch.ones(conv.in_channels, 1, k_h, k_w, dtype=torch.float64, device=x.device)
    taps = F.conv_transpose2d(nz, ones, stride=conv.stride, padding=conv.padding,
                              output_padding=conv.output_padding, groups=groups, dilation=conv.dilation)
    effective = int(round(float(taps.sum()))) * (conv.out_channels // groups)
    return int(dense), effective


def conv_macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(dense, effective) MACs of a Conv2d or ConvTranspose2d applied to ``x`` (giving ``out``)."""
    if isinstance(module, nn.ConvTranspose2d):
        return conv_transpose2d_macs(module, x)
    return conv2d_macs(module, x, out)


def gdn_macs(x: torch.Tensor) -> tuple[int, int]:
    n, c, h, w = x.shape
    macs = n * c * c * h * w
    return macs, macs


def _functional_conv2d_macs(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, bias=None, stride=1,
                            padding=0, dilation=1, groups=1) -> tuple[int, int]:
    """MACs of a bare ``F.conv2d`` call, counted like an nn.Conv2d with the same arguments."""
    from types import SimpleNamespace

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    k = tuple(weight.shape[-2:])
    dil = pair(dilation)
    if isinstance(padding, str):  # "valid" or "same" (stride 1)
        padding = (0, 0) if padding == "valid" else tuple(d * (kk - 1) // 2 for d, kk in zip(dil, k, strict=True))
    spec = SimpleNamespace(kernel_size=k, groups=groups, in_channels=weight.shape[1] * groups,
                           out_channels=weight.shape[0], padding=pair(padding), stride=pair(stride), dilation=dil,
                           padding_mode="zeros")
    return conv2d_macs(spec, input, out)


class _FunctionalConvs(TorchFunctionMode):
    """Counts ``F.conv2d`` calls that happen while no counted module is running."""

    def __init__(self, count: MacCount):
        super().__init__()
        self.count = count
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.conv2d and self.depth == 0 and isinstance(out, torch.Tensor):
            self.count.add("functional.conv2d", *_functional_conv2d_macs(out, *args, **kwargs))
        return out


def _counted(module: nn.Module) -> bool:
    from compressai.layers import GDN

    return hasattr(module, "vrtk_macs") or isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, GDN))


def _layer_macs(module: nn.Module, inputs, output) -> tuple[int, int] | None:
    from compressai.layers import GDN

    if hasattr(module, "vrtk_macs"):
        return module.vrtk_macs(inputs, output)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return conv_macs(module, inputs[0], output)
    if isinstance(module, GDN):
        return gdn_macs(inputs[0])
    return None


@contextlib.contextmanager
def count_macs(net: nn.Module):
    """Count MACs of every hooked layer while the block runs; yields the live MacCount."""
    count = MacCount()
    functional = _FunctionalConvs(count)
    handles = []
    for name, module in net.named_modules():
        if not _counted(module):
            continue

        def pre_hook(mod, inputs):
            functional.depth += 1

        def hook(mod, inputs, output, _name=name):
            result = _layer_macs(mod, inputs, output)  # its own F.conv2d (the tap count) is not a model conv
            functional.depth -= 1
            if result is not None:
                count.add(_name, *result)
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    try:
        with functional:
            yield count
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class CodecMacs:
    """MACs of one image's encode and decode, and the pixel count they are normalised by."""

    encoder: MacCount
    decoder: MacCount
    pixels: int

    def kmacs_per_pixel(self) -> dict[str, float]:
        p = self.pixels * 1000.0
        return {"encoder_dense": self.encoder.dense / p, "encoder_effective": self.encoder.effective / p,
                "decoder_dense": self.decoder.dense / p, "decoder_effective": self.decoder.effective / p}

    def layer_kmacs_per_pixel(self) -> dict[str, dict[str, list[float]]]:
        """``{"encoder"|"decoder": {module path: [dense, effective]}}`` in kMACs per pixel."""
        p = self.pixels * 1000.0
        return {side: {name: [d / p, e / p] for name, (d, e) in count.per_layer.items()}
                for side, count in (("encoder", self.encoder), ("decoder", self.decoder))}


@torch.no_grad()
def measure_codec_macs(net: nn.Module, x: torch.Tensor, lmbda: float | None = None, registry=None) -> CodecMacs:
    """Run the real compress and decompress on ``x`` (N, 3, H, W, padded) and count MACs of each."""
    from vrtk.rate import use_rate

    with use_rate(net, lmbda, registry):
        with count_macs(net) as enc:
            coded = net.compress(x)
        with count_macs(net) as dec:
            net.decompress(coded["strings"], coded["shape"])
    return CodecMacs(enc, dec, x.shape[0] * x.shape[-2] * x.shape[-1])


def dense_kmacs_per_pixel(net: nn.Module, size: tuple[int, int] = (256, 256), lmbda: float | None = None,
                          registry=None) -> dict[str, float]:
    """Dense encoder/decoder kMACs per pixel on a mid-grey image of ``size`` (dense counts do not depend on content)."""
    device = next(net.parameters()).device
    x = torch.full((1, 3, *size), 0.5, device=device)
    was_training = net.training
    net.eval()
    try:
        macs = measure_codec_macs(net, x, lmbda, registry).kmacs_per_pixel()
    finally:
        net.train(was_training)
    return {"encoder": macs["encoder_dense"], "decoder": macs["decoder_dense"]}
