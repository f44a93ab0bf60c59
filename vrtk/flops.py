"""Multiply-accumulates (MACs, not FLOPs: 1 MAC = 2 FLOPs) of the real encode and decode paths.

Counted with forward hooks while ``compress`` and ``decompress`` run, so every architecture is measured on the
path it really executes. For each convolution both numbers are exact:

* dense:      Conv2d  C_out * C_in/g * k_h * k_w * H_out * W_out;  ConvTranspose2d  C_in * C_out/g * k_h * k_w * H_in * W_in
* effective:  Conv2d  C_out/g * sum(conv2d((x != 0), ones(g, C_in/g, k_h, k_w)))  -- the taps that meet a non-zero
              ConvTranspose2d  C_out/g * k_h * k_w * nnz(x)                       -- every non-zero input is scattered

so zeros from any source (ReLU in h_a/h_s, or a gating plugin) are credited the same way. GDN/IGDN is a 1x1
convolution over channels (C*C per pixel, dense). Any module with a ``vrtk_macs(inputs, output)`` method returning
``(dense, effective)`` adds that too (gating plugins count their own overhead this way).
Autoregressive context models that call ``F.conv2d`` directly (mbt2018's decode loop) are not seen by hooks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


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
    per_input = (conv.out_channels // conv.groups) * k_h * k_w
    dense = x.numel() * per_input
    effective = int((x != 0).sum()) * per_input
    return int(dense), int(effective)


def gdn_macs(x: torch.Tensor) -> tuple[int, int]:
    n, c, h, w = x.shape
    macs = n * c * c * h * w
    return macs, macs


def _layer_macs(module: nn.Module, inputs, output) -> tuple[int, int] | None:
    from compressai.layers import GDN

    if hasattr(module, "vrtk_macs"):
        return module.vrtk_macs(inputs, output)
    if isinstance(module, nn.Conv2d):
        return conv2d_macs(module, inputs[0], output)
    if isinstance(module, nn.ConvTranspose2d):
        return conv_transpose2d_macs(module, inputs[0])
    if isinstance(module, GDN):
        return gdn_macs(inputs[0])
    return None


@contextlib.contextmanager
def count_macs(net: nn.Module):
    """Count MACs of every hooked layer while the block runs; yields the live MacCount."""
    count = MacCount()
    handles = []
    for name, module in net.named_modules():
        def hook(mod, inputs, output, _name=name):
            result = _layer_macs(mod, inputs, output)
            if result is not None:
                count.add(_name, *result)
        handles.append(module.register_forward_hook(hook))
    try:
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
