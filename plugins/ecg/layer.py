"""The energy gate and the gated convolution it feeds (Yin et al., "Universal Efficient Variable-Rate Neural Image
Compression").

::

    x ──┬─────────────────────────────── x * mask ──> base_layer (the unchanged Conv2d / ConvTranspose2d)
        └─ x^2 ─┬─ GAP ─ Conv1d_k ─ sigmoid = omega        ^
                │                    th = omega * alpha  (* mean(x^2) if energy_relative) * scale
                └──────────── z = x^2 - th ── mask = 1[z > 0]   (training: STE or soft sigmoid(eps * z),
                                                                 z / mean(x^2) inside it if eps_relative)

The comparison is strict (design.md's 1[x^2 - th > 0]; the issue writes >=): the two differ only where x^2 == th,
e.g. x = 0 with th = 0, where the output is the same, and the strict form counts zero inputs as zeroed in the
reported sparsity.

The mask depends only on the layer's input, so the decoder, which sees the same input, computes the same masks:
compress -> decompress reproduces forward's reconstruction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from vrtk_plugins.ecg.config import CHANNEL, EcgConfig
from vrtk_plugins.ecg.sparse import (
    DEFAULT_TILE,
    apply_tile_mask,
    channel_sliced,
    compute_tile,
    sparse_conv,
    supported,
    tile_energy_any_size,
    tile_sumsq,
)

from vrtk.injection import Adapter

TINY = 1e-12


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's odd kernel size |(log2 C + b) / gamma| (k = 5 for C in 128..320, 3 for tiny test models)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return max(t if t % 2 else t + 1, 1)


def quantile_threshold(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row, a threshold t such that ``fraction`` of the row's values are <= t, placed halfway between two
    distinct values (robust to float noise). Ties are not split: the tied values are kept (fewer zeroed)."""
    n = values.shape[1]
    k = min(int(round(fraction * n)), n)
    if k == 0:  # zero inputs stay zeroed (strict comparison), nothing else
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    lo = values.kthvalue(k, dim=1).values
    hi = values.kthvalue(k + 1, dim=1).values if k < n else lo * 2 + 1
    below = torch.where(values < lo[:, None], values, torch.zeros_like(values)).amax(dim=1)
    return torch.where(hi > lo, (lo + hi) / 2, (below + lo) / 2)


class EnergyGate(nn.Module):
    """Zeroes the elements of x whose energy x^2 falls below a per-image, per-channel threshold.

    With ``config.gate_tile = T`` the energy compared is the mean of x^2 over each T x T tile of a channel, and the
    whole tile is kept or zeroed (structured zeros the sparse path can skip); with ``CHANNEL`` it is the channel's
    mean energy, and whole channels are kept or zeroed.
    """

    def __init__(self, channels: int, config: EcgConfig):
        super().__init__()
        k = eca_kernel_size(channels)
        self.config = config
        self.per_channel = int(config.gate_tile) == CHANNEL
        self.tile = max(int(config.gate_tile), 0)  # 0 for element and channel gates: no tile grid
        # ECA's Conv1d over the channel axis, kept as a bare weight (initialised as nn.Conv1d would be) so that code
        # scanning a model for convolutions (placement, FLOPs, `out_channels` lookups) never mistakes it for one.
        self.eca_weight = nn.Parameter(torch.empty(1, 1, k))
        nn.init.kaiming_uniform_(self.eca_weight, a=math.sqrt(5))
        self.alpha = nn.Parameter(torch.full((channels,), float(config.alpha_init)))
        # False until the data-dependent init ran (only when init_sparsity is set); saved, so a reload keeps alpha.
        self.register_buffer("initialized", torch.tensor(config.init_sparsity is None))
        self.scale = 1.0  # the compute knob (ecg.scale): a plain attribute, so the state_dict is unchanged
        self.last_sparsity: float | None = None  # share of inputs the last forward's hard mask zeroed
        self.last_tile_mask: torch.Tensor | None = None  # (N, C, tiles_h, tiles_w) of the last eval forward
        self.last_sparsity_for_loss: torch.Tensor | None = None

    @property
    def kernel_size(self) -> int:
        return self.eca_weight.shape[-1]

    def _learned(self, weight: torch.Tensor) -> torch.Tensor:
        """A gate parameter as the forward uses it: detached when ``freeze_gates`` holds the gate fixed."""
        return weight.detach() if self.config.freeze_gates else weight

    def omega(self, energy: torch.Tensor) -> torch.Tensor:
        """sigmoid(Conv1d_k(GAP(x^2))) over the channel axis, (N, C) -> (N, C)."""
        k = self.kernel_size
        weight = self._learned(self.eca_weight)
        return torch.sigmoid(F.conv1d(energy.unsqueeze(1), weight, padding=k // 2).squeeze(1))

    def threshold(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(th, energy), both (N, C): th = omega * alpha [* energy] * scale."""
        energy = x2.mean(dim=(-2, -1))
        return self._threshold_from(energy), energy

    def _threshold_from(self, energy: torch.Tensor) -> torch.Tensor:
        th = self.omega(energy) * self._learned(self.alpha)
        if self.config.energy_relative:
            th = th * energy
        if self.scale != 1.0:
            th = th * self.scale
        return th

    def statistic(self, x2: torch.Tensor) -> torch.Tensor:
        """What training compares with the threshold: x^2 itself, or its mean over each tile (partial tiles at the
        edge are averaged over their valid part), or over the whole channel."""
        if self.per_channel:
            return x2.mean(dim=(-2, -1), keepdim=True)
        if not self.tile:
            return x2
        return F.avg_pool2d(x2, self.tile, ceil_mode=True)

    def expand(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-tile (or per-channel) mask back at full resolution."""
        if self.per_channel:
            return m.expand_as(like)
        if not self.tile:
            return m
        h, w = like.shape[-2:]
        return m.repeat_interleave(self.tile, dim=-2).repeat_interleave(self.tile, dim=-1)[..., :h, :w]

    def hard_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The boolean mask eval and real coding use (full resolution)."""
        with torch.no_grad():
            if self.tile or self.per_channel:
                _, tile_mask = self.gate_eval(x, apply=False)
                return self.expand(tile_mask, x)
            return self.gate_eval(x)[0] != 0  # element mode: zero inputs are zeroed unless th <= 0

    def tile_energy(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean x^2 of each T x T tile (N, C, tiles_h, tiles_w), mean x^2 of each channel (N, C)).

        When T divides H and W this never materialises x^2 (a reduction over a view), which matters on CPU:
        the gate is pure memory traffic next to the convolution it feeds.
        """
        h, w, t = x.shape[-2], x.shape[-1], self.tile
        if torch.compiler.is_compiling():  # an export with symbolic sizes: one path for every size
            return tile_energy_any_size(x, t)
        sums = tile_sumsq(x, t)
        if sums is not None:
            return sums / (t * t), sums.sum(dim=(-2, -1)) / (h * w)
        x2 = x * x
        return F.avg_pool2d(x2, t, ceil_mode=True), x2.mean(dim=(-2, -1))

    def _tile_areas(self, x: torch.Tensor) -> torch.Tensor:
        h, w, t = x.shape[-2], x.shape[-1], self.tile
        rows = torch.full(((h + t - 1) // t,), float(t), device=x.device)
        cols = torch.full(((w + t - 1) // t,), float(t), device=x.device)
        rows[-1], cols[-1] = h - t * (len(rows) - 1), w - t * (len(cols) - 1)
        return rows[:, None] * cols[None, :]

    @torch.no_grad()
    def gate_eval(self, x: torch.Tensor, apply: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hard gating for eval and coding: (x * mask, or x itself when ``apply`` is False; the tile mask).

        One code path for forward, compress and decompress, so encoder and decoder compute identical masks.
        The mask returned is per tile (N, C, tiles_h, tiles_w), per channel (N, C, 1, 1), or None (elements).
        """
        if self.per_channel:
            energy = (x * x).mean(dim=(-2, -1))
            channel_mask = (energy > self._threshold_from(energy))[..., None, None]
            self.last_sparsity = 1.0 - float(channel_mask.float().mean())
            self.last_tile_mask = channel_mask
            return (x * channel_mask if apply else x), channel_mask
        if self.tile:
            stat, energy = self.tile_energy(x)
            th = self._threshold_from(energy)
            tile_mask = stat > th[..., None, None]
            if not torch.compiler.is_compiling():  # bookkeeping, not part of an exported graph
                areas = self._tile_areas(x)
                kept = float((tile_mask * areas).sum()) / (float(areas.sum()) * x.shape[0] * x.shape[1])
                self.last_sparsity = 1.0 - kept
            self.last_tile_mask = tile_mask
            if not apply:
                return x, tile_mask
            return apply_tile_mask(x, tile_mask, self.tile), tile_mask
        x2 = x * x
        th = self._threshold_from(x2.mean(dim=(-2, -1)))
        x2.gt_(th[..., None, None])  # x2 now holds the 0/1 mask: one temporary for the whole gate
        self.last_sparsity = 1.0 - float(x2.mean())
        self.last_tile_mask = None
        return x2.mul_(x), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.gate_eval(x)[0]
        if not bool(self.initialized):
            self.init_alpha(x, float(self.config.init_sparsity), self.config.init_scope)
        x2 = x * x
        th, energy = self.threshold(x2)
        z = self.statistic(x2) - th[..., None, None]
        hard = z > 0
        self.last_tile_mask = None
        # eps_relative (not in the paper): z / the channel's energy, floored by the layer's mean energy so that
        # dead channels get no huge gradients; the paper's surrogate is sigmoid(eps * z)
        if self.config.eps_relative:
            floor = 1e-3 * energy.detach().mean(dim=1, keepdim=True) + TINY
            temperature = torch.maximum(energy.detach(), floor)[..., None, None]
        else:
            temperature = 1.0
        soft = self.expand(torch.sigmoid(self.config.eps * z / temperature), x)
        hard_f = self.expand(hard, x).to(x.dtype)
        mask = hard_f + soft - soft.detach() if self.config.estimator == "ste" else soft
        # Measured zero fraction of the hard gate (what eval runs), with the soft mask's gradient (for the loss).
        hard_zero = 1.0 - hard_f.mean()
        soft_zero = 1.0 - soft.mean()
        self.last_sparsity_for_loss = hard_zero + soft_zero - soft_zero.detach()
        self.last_sparsity = float(hard_zero)
        return x * mask

    @torch.no_grad()
    def init_alpha(self, x: torch.Tensor, sparsity: float, scope: str = "channel") -> None:
        """Set alpha so that ``sparsity`` of this batch's inputs are zeroed, per channel or for the whole layer.

        Element (n, c, h, w) is zeroed iff stat <= omega * alpha [* energy] * scale, i.e. iff the ratio
        stat / (omega [* energy] * scale) <= alpha (stat = x^2, or its tile mean); alpha is that ratio's quantile.
        """
        x = x.detach()
        x2 = x * x
        energy = x2.mean(dim=(-2, -1))
        omega = self.omega(energy)
        denom = omega * (energy if self.config.energy_relative else 1.0) * self.scale
        stat = self.statistic(x2)  # per channel: one value per image, not H x W copies of it
        ratio = (stat if self.per_channel else self.expand(stat, x)) / denom.clamp_min(TINY)[..., None, None]
        if scope == "layer":
            values = ratio.reshape(1, -1)
        else:
            values = ratio.transpose(0, 1).reshape(ratio.shape[1], -1)
        alpha = quantile_threshold(values, sparsity).to(self.alpha.dtype)
        self.alpha.copy_(alpha.expand_as(self.alpha))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.alpha)
            self.alpha /= torch.distributed.get_world_size()
        self.initialized.fill_(True)


class EcgConv(Adapter):
    """A convolution whose input passes an :class:`EnergyGate` first; the convolution is kept as ``base_layer``."""

    plugin_name = "ecg"
    output_is_base_layers = True  # the gate acts on the input only

    def __init__(self, base_layer: nn.Conv2d | nn.ConvTranspose2d, config: EcgConfig):
        super().__init__()
        self.gate = EnergyGate(base_layer.in_channels, config)
        self.base_layer = base_layer  # registered last: code reading a transform's last `out_channels` finds it
        self.sparse = False  # ecg.sparse: the tiled channel-skipping inference path (same result, less work)
        self.tile = None  # tile of the sparse path (None: the gate's tile, doubled until a tile is worth a call)
        self._conv_ran_sparse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # element-wise masks (the paper's) leave no block a CPU can skip: finding that out costs a scan per layer
        # (measured: 1.29x dense decode with it, 1.08x without), so they keep the dense kernel unless ecg.tile is set
        self._conv_ran_sparse = (self.sparse and not self.training and supported(self.base_layer)
                                 and bool(self.gate.per_channel or self.gate.tile or self.tile))
        if not self._conv_ran_sparse:
            return self.base_layer(self.gate(x))
        if self.gate.per_channel:  # one convolution over the surviving channels of each image; x is read as is
            _, channel_mask = self.gate.gate_eval(x, apply=False)
            outputs = [channel_sliced(self.base_layer, x[i:i + 1], channel_mask[i, :, 0, 0])
                       for i in range(x.shape[0])]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # cat copies even a single tensor
        tile = self.tile or compute_tile(self.base_layer, self.gate.tile or DEFAULT_TILE, x.shape[-2:])
        on_gate_tiles = bool(self.gate.tile) and tile == self.gate.tile
        # On the gate's own tiles the sparse loops read only live (tile, channel) blocks of x, so the mask need
        # not even be applied (a full read and write of x saved).
        gated, tile_mask = self.gate.gate_eval(x, apply=not on_gate_tiles)
        if on_gate_tiles:
            return sparse_conv(self.base_layer, gated, tile, tile_mask=tile_mask, unmasked=True)
        if tile_mask is not None and tile % self.gate.tile == 0:  # coarser tiles: live if any gate tile in it is
            factor = tile // self.gate.tile
            tile_mask = F.max_pool2d(tile_mask.to(x.dtype), factor, ceil_mode=True) > 0
            return sparse_conv(self.base_layer, gated, tile, tile_mask=tile_mask)
        return sparse_conv(self.base_layer, gated, tile)

    def vrtk_macs(self, inputs, output) -> tuple[int, int]:
        """Gate overhead (x^2 + GAP, compare, mask: 3 ops per element; Conv1d; sigmoid and scaling per channel).

        The convolution itself is counted by vrtk.flops from the masked input its own hook sees; on the sparse path
        that hook does not fire, so the convolution is counted here, from the same masked input.
        """
        from vrtk.flops import conv_macs

        x = inputs[0]
        n, c = x.shape[:2]
        overhead = 3 * x.numel() + n * c * self.gate.kernel_size + 3 * n * c
        dense = effective = overhead
        if self._conv_ran_sparse:
            d, e = conv_macs(self.base_layer, x * self.gate.hard_mask(x), output)
            dense, effective = dense + d, effective + e
        return int(dense), int(effective)

    def extra_repr(self) -> str:
        cfg = self.gate.config
        return (f"eca_k={self.gate.kernel_size}, estimator={cfg.estimator}, "
                f"energy_relative={cfg.energy_relative}, scale={self.gate.scale}, sparse={self.sparse}")
