"""The sparse inference path: turn zeros at a convolution's input into less CPU work, with the same result.

Unstructured zeros do not save time on a CPU: a dense GEMM at 30-50 % density beats MKL's sparse kernels (measured
here, see the README). What does save time is skipping whole blocks of work, so this path works per spatial tile:

* ConvTranspose2d (scatter): the output is linear in the input, so it is the sum over input tiles of each tile's
  own transposed convolution. Each tile is convolved with only the input channels that are non-zero in it
  (``weight[active]``) and its (T-1)*s + k wide result is added into the output; padding is cropped at the end.
* Conv2d (scatter too): each input tile, zero-padded by the kernel's reach, is convolved with its live channels
  over the outputs its receptive fields reach, and added in (about (T/s + k/s)^2 / (T/s)^2 more MACs per live
  block; a gather over output tiles would need the union of the live channels of all tiles under its halo).
* Per image, channels that are zero everywhere are sliced away (when at least ``MIN_SKIP`` of them are); when tiles
  would skip less than ``MIN_SKIP`` of the work, the dense kernel runs (on the surviving channels).

Exact up to float summation order (tested against the dense convolution). Zero channels contribute exactly 0, so
only the order of additions differs. Tiles pay off when zeros come in blocks: ECG's ``gate_tile`` option gates whole
(tile, channel) blocks; the paper's element-wise masks rarely leave a tile channel empty, and this path then falls
back to the dense kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TILE = 32
MIN_SKIP = 0.2  # tiles must skip at least this fraction of the (tile, channel) work, else run dense
MIN_TILE_MACS = 50e6  # a dense tile should hold this much work, or the per-call overhead eats the savings


def compute_tile(conv: nn.Module, tile: int, size) -> int:
    """The smallest ``tile * 2^j`` whose dense work (MACs) reaches MIN_TILE_MACS, or that covers the image.

    Measured here: one tile convolution costs a roughly fixed ~0.5-2 ms on top of its MACs (weight slicing, oneDNN
    reorders, the overlap-add), so a 64-channel layer on 16x16 tiles ran slower than the dense kernel.
    """
    k_h, k_w = conv.kernel_size
    per_pixel = conv.in_channels * conv.out_channels // conv.groups * k_h * k_w
    if isinstance(conv, nn.Conv2d):
        per_pixel /= conv.stride[0] * conv.stride[1]
    while per_pixel * tile * tile < MIN_TILE_MACS and tile < max(size):
        tile *= 2
    return tile


def supported(conv: nn.Module) -> bool:
    return (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def sparse_conv(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor, tile: int | None = None,
                tile_mask: torch.Tensor | None = None, min_skip: float = MIN_SKIP,
                unmasked: bool = False) -> torch.Tensor:
    """``conv(x)`` computed tile by tile with the zero (tile, channel) blocks of ``x`` skipped.

    ``tile_mask`` (N, C, ceil(H/T), ceil(W/T)), when given, says which input tiles of size ``tile`` may hold
    non-zeros (ECG's tile gate knows it already); otherwise it is measured from ``x``. With ``unmasked`` the
    blocks ``tile_mask`` marks dead still hold values in ``x`` and are treated as zeros: the tile loops only ever
    read live blocks, so the gate need not write a masked copy of x at all.
    """
    if unmasked and tile_mask is None:
        raise ValueError("unmasked input needs a tile_mask")
    if not supported(conv):
        return conv(apply_tile_mask(x, tile_mask, tile) if unmasked else x)
    if x.shape[0] > 1:  # decisions are per image
        return torch.cat([sparse_conv(conv, x[i:i + 1], tile, None if tile_mask is None else tile_mask[i:i + 1],
                                      min_skip, unmasked) for i in range(x.shape[0])])
    tile = int(tile or DEFAULT_TILE)
    active = tile_mask[0] if tile_mask is not None else tile_activity(x, tile)
    lazy_mask = tile_mask if unmasked else None
    if isinstance(conv, nn.ConvTranspose2d):
        return _conv_transpose2d(conv, x, tile, active, min_skip, lazy_mask)
    return _conv2d(conv, x, tile, active, min_skip, lazy_mask)


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def tile_sumsq(x: torch.Tensor, tile: int) -> torch.Tensor | None:
    """Sum of x^2 over each tile, (N, C, H/T, W/T), without materialising x^2; None unless T divides H and W.

    Reduces in the tensor's own memory layout (NCHW or channels-last), so it costs one read of x.
    """
    n, c, h, w = x.shape
    if h % tile or w % tile:
        return None
    if is_channels_last(x):
        rows = torch.linalg.vector_norm(x.permute(0, 2, 3, 1).reshape(n, h, w // tile, tile, c), dim=3).square_()
        return rows.view(n, h // tile, tile, w // tile, c).sum(dim=2).permute(0, 3, 1, 2)
    rows = torch.linalg.vector_norm(x.reshape(n, c, h, w // tile, tile), dim=-1).square_()
    return rows.view(n, c, h // tile, tile, w // tile).sum(dim=3)


def tile_energy_any_size(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean x^2 of each tile over its pixels inside the input, mean x^2 of each channel) with no branch on the
    size: what a graph exported with symbolic height and width computes (``avg_pool2d(ceil_mode=True)`` does the
    same in torch, but ONNX's AveragePool sizes its ceil-mode output otherwise when the input is smaller than a tile).
    """
    h, w = x.shape[-2], x.shape[-1]
    x2 = x * x
    pad = (0, (-w) % tile, 0, (-h) % tile)
    sums = F.avg_pool2d(F.pad(x2, pad), tile)
    inside = F.avg_pool2d(F.pad(torch.ones_like(x2), pad), tile)  # the share of each tile inside the input
    return sums / inside, x2.mean(dim=(-2, -1))


def expand_tile_mask(tile_mask: torch.Tensor, h: int, w: int, tile: int) -> torch.Tensor:
    """A per-tile mask (N, C, tiles_h, tiles_w) at full resolution (N, C, h, w), by gathering each pixel's tile."""
    rows = torch.arange(h, device=tile_mask.device) // tile
    cols = torch.arange(w, device=tile_mask.device) // tile
    return tile_mask.index_select(-2, rows).index_select(-1, cols)


def apply_tile_mask(x: torch.Tensor, tile_mask: torch.Tensor, tile: int) -> torch.Tensor:
    """x with the dead (tile, channel) blocks zeroed (a broadcast over a view when T divides H and W)."""
    n, c, h, w = x.shape
    m = tile_mask.to(x.dtype)
    if torch.compiler.is_compiling():  # an export with symbolic sizes: one path for every size
        return x * expand_tile_mask(m, h, w, tile)
    if h % tile == 0 and w % tile == 0:
        if is_channels_last(x):
            v = x.permute(0, 2, 3, 1).reshape(n, h // tile, tile, w // tile, tile, c)
            out = v * m.permute(0, 2, 3, 1)[:, :, None, :, None, :]
            return out.view(n, h, w, c).permute(0, 3, 1, 2)
        return (x.reshape(n, c, h // tile, tile, w // tile, tile) * m[:, :, :, None, :, None]).view(n, c, h, w)
    full = m.repeat_interleave(tile, dim=-2).repeat_interleave(tile, dim=-1)[..., :h, :w]
    return x * full


def _gather(x: torch.Tensor, idx: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """x[:, idx, r0:r1, c0:c1] as a new tensor in x's memory layout (the tile convolutions run in it)."""
    if is_channels_last(x):
        # index_select on the innermost dim of the 4-D view is a slow strided loop on CPU (31 ms for 30 of 64
        # channels of a 256x384 image); on the (pixels, channels) matrix it is a fast row copy (2.4 ms)
        region = x.permute(0, 2, 3, 1)[:, r0:r1, c0:c1]
        pixels = region.reshape(-1, x.shape[1]).index_select(1, idx)
        return pixels.view(*region.shape[:3], idx.numel()).permute(0, 3, 1, 2)
    return x[:, :, r0:r1, c0:c1].index_select(1, idx)


def _zeros_like_layout(x: torch.Tensor, *shape: int) -> torch.Tensor:
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.zeros(shape, dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)


def tile_activity(x: torch.Tensor, tile: int) -> torch.Tensor:
    """(C, tiles_h, tiles_w): True where a channel has a non-zero in the tile (x is one image).

    Reduces over a view in x's own memory layout (max_pool2d on one channels-last image copied it first: 150 ms
    of a 480 ms Kodak encode + decode); a ragged edge is zero-padded up to whole tiles."""
    image = x[0]
    c, h, w = image.shape
    if h % tile or w % tile:
        image = F.pad(image, (0, -w % tile, 0, -h % tile))
        h, w = image.shape[-2:]
    if is_channels_last(x):  # (H, W, C) is the contiguous order
        hwc = image.permute(1, 2, 0).reshape(h // tile, tile, w // tile, tile, c)
        return hwc.abs().amax(dim=3).amax(dim=1).permute(2, 0, 1) > 0  # one dim at a time: 5x faster than both
    return image.reshape(c, h // tile, tile, w // tile, tile).abs().amax(dim=4).amax(dim=2) > 0


def channel_sliced(conv, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """The dense kernel on ``channels`` of x (the ones non-zero somewhere in the image; the others are read as zero).

    Functional calls only: the module itself never runs on this path, so MAC counting hooks see the gated module
    alone."""
    if not bool(channels.any()):  # an all-zero input: one (zero) channel gives the bias-only output
        channels = torch.zeros_like(channels)
        channels[0] = True
        x = torch.zeros_like(x[:, :1]).expand_as(x)
    if float(channels.float().mean()) > 1.0 - MIN_SKIP:  # too few dead channels to pay for the gather
        if not bool(channels.all()):
            x = x * channels.to(x.dtype).view(1, -1, 1, 1)
        if isinstance(conv, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.output_padding, 1,
                                      conv.dilation)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    idx = channels.nonzero().squeeze(1)
    live = _gather(x, idx, 0, x.shape[-2], 0, x.shape[-1])  # keeps channels-last: 2-4x faster kernels on CPU
    if isinstance(conv, nn.ConvTranspose2d):
        return F.conv_transpose2d(live, conv.weight.index_select(0, idx), conv.bias, conv.stride, conv.padding,
                                  conv.output_padding, 1, conv.dilation)
    return F.conv2d(live, conv.weight.index_select(1, idx), conv.bias, conv.stride, conv.padding, conv.dilation)


def _add_bias(out: torch.Tensor, conv) -> torch.Tensor:
    if conv.bias is not None:
        out += conv.bias.view(1, -1, 1, 1)
    return out


def _dense_fallback(conv, x: torch.Tensor, tile: int, active: torch.Tensor, min_skip: float,
                    lazy_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The channel-sliced dense kernel when tiles would skip too little work (or the input is all zero)."""
    skipped = 1.0 - float(active.float().mean())
    channels = active.flatten(1).any(1)
    if skipped >= min_skip and bool(channels.any()):
        return None
    if lazy_mask is not None:
        x = apply_tile_mask(x, lazy_mask, tile)
    return channel_sliced(conv, x, channels)


def _conv_transpose2d(conv: nn.ConvTranspose2d, x: torch.Tensor, tile: int, active: torch.Tensor,
                      min_skip: float, lazy_mask: torch.Tensor | None) -> torch.Tensor:
    dense = _dense_fallback(conv, x, tile, active, min_skip, lazy_mask)
    if dense is not None:
        return dense
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = conv.stride, conv.padding, conv.dilation
    (k_h, k_w), (op_h, op_w) = conv.kernel_size, conv.output_padding
    h, w = x.shape[-2:]
    full_h, full_w = (h - 1) * s_h + d_h * (k_h - 1) + 1 + op_h, (w - 1) * s_w + d_w * (k_w - 1) + 1 + op_w
    buf = _zeros_like_layout(x, 1, conv.out_channels, full_h, full_w)
    weight = conv.weight
    for ti in range(active.shape[1]):
        for tj in range(active.shape[2]):
            idx = active[:, ti, tj].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            i0, j0 = ti * tile, tj * tile
            part = _gather(x, idx, i0, i0 + tile, j0, j0 + tile)
            y = F.conv_transpose2d(part, weight.index_select(0, idx), None, conv.stride, 0, 0, 1, conv.dilation)
            buf[:, :, i0 * s_h:i0 * s_h + y.shape[-2], j0 * s_w:j0 * s_w + y.shape[-1]] += y
    out_h, out_w = full_h - 2 * p_h, full_w - 2 * p_w
    out = buf[:, :, p_h:p_h + out_h, p_w:p_w + out_w]
    out = out.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)
    return _add_bias(out, conv)


def _receptive_span(i0: int, i1: int, stride: int, pad: int, dil: int, k: int, size_out: int):
    """Outputs [lo, hi) of a conv whose receptive field meets input rows [i0, i1), the input rows [r0, r1) they
    read (clipped to the tile) and the zero rows to add before/after (other tiles' rows, or the conv padding)."""
    lo = max(0, -(-(i0 + pad - dil * (k - 1)) // stride))
    hi = min(size_out, (i1 - 1 + pad) // stride + 1)
    if hi <= lo:
        return None
    start, end = lo * stride - pad, (hi - 1) * stride - pad + dil * (k - 1) + 1
    r0, r1 = max(i0, start), min(i1, end)
    return lo, hi, r0, r1, r0 - start, end - r1


def _conv2d(conv: nn.Conv2d, x: torch.Tensor, tile: int, active: torch.Tensor, min_skip: float,
            lazy_mask: torch.Tensor | None) -> torch.Tensor:
    """Scatter form: conv(x) = sum over input tiles of conv(tile, zero elsewhere). Each tile is convolved with its
    live channels over the outputs its receptive fields reach, and added in. (A gather over output tiles would
    have to take the union of the live channels of every tile under its receptive field, halo included.)"""
    dense = _dense_fallback(conv, x, tile, active, min_skip, lazy_mask)
    if dense is not None:
        return dense
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = conv.stride, conv.padding, conv.dilation
    k_h, k_w = conv.kernel_size
    h, w = x.shape[-2:]
    out_h = (h + 2 * p_h - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (w + 2 * p_w - d_w * (k_w - 1) - 1) // s_w + 1
    out = _zeros_like_layout(x, 1, conv.out_channels, out_h, out_w)
    channels_last = is_channels_last(x)
    rows = [_receptive_span(i, min(i + tile, h), s_h, p_h, d_h, k_h, out_h) for i in range(0, h, tile)]
    cols = [_receptive_span(j, min(j + tile, w), s_w, p_w, d_w, k_w, out_w) for j in range(0, w, tile)]
    for ti, row in enumerate(rows):
        for tj, col in enumerate(cols):
            if row is None or col is None or row[3] <= row[2] or col[3] <= col[2]:
                continue
            idx = active[:, ti, tj].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            lo_h, hi_h, r0, r1, top, bottom = row
            lo_w, hi_w, c0, c1, left, right = col
            part = _gather(x, idx, r0, r1, c0, c1)
            if top or bottom or left or right:
                part = F.pad(part, (left, right, top, bottom))
                if channels_last:
                    part = part.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(part, conv.weight.index_select(1, idx), None, conv.stride, 0, conv.dilation)
            out[:, :, lo_h:hi_h, lo_w:hi_w] += y
    return _add_bias(out, conv)
