"""ECG's sparse inference path (plugins/ecg/sparse.py): the same result as the dense convolution, less work."""

from __future__ import annotations

import pytest
import torch
from test_ecg import images, tiny
from torch import nn
from vrtk_plugins.ecg.plugin import calibrate, ecg_modules
from vrtk_plugins.ecg.sparse import apply_tile_mask, sparse_conv, tile_sumsq

from vrtk.codec import pad
from vrtk.flops import measure_codec_macs
from vrtk.options import apply_options

CONVS = [
    lambda: nn.Conv2d(8, 6, 5, 2, 2),  # g_a
    lambda: nn.Conv2d(8, 6, 3, 1, 1),  # h_s.4, cheng's 3x3
    lambda: nn.Conv2d(8, 6, 1),  # 1x1 skip / attention
    lambda: nn.Conv2d(8, 6, 4, 3, 1, dilation=2),
    lambda: nn.ConvTranspose2d(8, 6, 5, 2, 2, 1),  # g_s, h_s
    lambda: nn.ConvTranspose2d(8, 6, 3, 1, 1),
    lambda: nn.ConvTranspose2d(8, 6, 5, 2, 2, 0),
]


def tile_masked(shape, tile: int, live: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen)
    mask = torch.rand(n, c, -(-h // tile), -(-w // tile), generator=gen) < live
    full = mask.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[..., :h, :w]
    return x, mask, x * full


@pytest.mark.parametrize("case", range(len(CONVS)))
@pytest.mark.parametrize("size,tile", [((13, 17), 4), ((16, 32), 8), ((5, 7), 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiles_give_the_dense_result(case, size, tile, channels_last):
    torch.manual_seed(case)
    conv = CONVS[case]()
    x, mask, masked = tile_masked((2, 8, *size), tile, 0.4, seed=case)
    with torch.no_grad():
        expected = conv(masked)
        if channels_last:
            x, masked = (t.contiguous(memory_format=torch.channels_last) for t in (x, masked))
        for source, tile_mask, lazy in ((masked, None, False), (masked, mask, False), (x, mask, True)):
            for min_skip in (0.0, 1.0):  # the tile loops, and the (channel-sliced) dense fallback
                out = sparse_conv(conv, source, tile, tile_mask=tile_mask, min_skip=min_skip, unmasked=lazy)
                torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_whole_channels_off_and_all_zero_inputs():
    conv = nn.ConvTranspose2d(8, 4, 5, 2, 2, 1)
    x = torch.randn(1, 8, 9, 9)
    x[:, 2:6] = 0
    with torch.no_grad():
        torch.testing.assert_close(sparse_conv(conv, x, 4), conv(x), atol=1e-5, rtol=1e-5)
        zero = torch.zeros(1, 8, 9, 9)
        torch.testing.assert_close(sparse_conv(conv, zero, 4, min_skip=0.0), conv(zero))


@pytest.mark.parametrize("channels_last", [False, True])
def test_tile_helpers(channels_last):
    x, mask, masked = tile_masked((1, 3, 16, 24), 8, 0.5, seed=1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(apply_tile_mask(x, mask, 8), masked)
    sums = (x * x).reshape(1, 3, 2, 8, 3, 8).sum(dim=(3, 5))
    torch.testing.assert_close(tile_sumsq(x, 8), sums, rtol=1e-5, atol=1e-5)
    assert tile_sumsq(x, 5) is None


@pytest.mark.parametrize("gate_tile", [0, 8, -1])
def test_sparse_option_decodes_the_same_image_and_counts_the_same_macs(gate_tile):
    wrapped = tiny(configs={"ecg": {"gate_tile": gate_tile}})
    net = wrapped.net.eval()
    x = pad(images(1, 96))[0]
    calibrate(net, x, 0.6)
    net.update(force=True)
    with torch.no_grad():
        coded = net.compress(x)
        dense = net.decompress(coded["strings"], coded["shape"])["x_hat"]
        dense_macs = measure_codec_macs(net, x)
        apply_options(net, {"ecg.sparse": True, "ecg.tile": 8})
        coded_sparse = net.compress(x)
        sparse = net.decompress(coded_sparse["strings"], coded_sparse["shape"])["x_hat"]
        sparse_macs = measure_codec_macs(net, x)
    assert coded_sparse["strings"] == coded["strings"]
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)
    for side in ("encoder", "decoder"):
        before, after = getattr(dense_macs, side), getattr(sparse_macs, side)
        assert (after.dense, after.effective) == (before.dense, before.effective)
    assert all(m._conv_ran_sparse for _, m in ecg_modules(net))


def test_every_tile_convolution_reads_only_live_blocks():
    """With ``unmasked`` the dead blocks still hold (huge) values: any read of them would show in the output."""
    conv = nn.Conv2d(4, 3, 3, 1, 1)
    x, mask, masked = tile_masked((1, 4, 16, 16), 4, 0.5, seed=3)
    poisoned = torch.where(masked == 0, torch.full_like(x, 1e6), x)
    calls = []
    original = torch.nn.functional.conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape[1])
        return original(*args, **kwargs)

    torch.nn.functional.conv2d = counting
    try:
        with torch.no_grad():
            out = sparse_conv(conv, poisoned, 4, tile_mask=mask, min_skip=0.0, unmasked=True)
    finally:
        torch.nn.functional.conv2d = original
    torch.testing.assert_close(out, conv(masked), atol=1e-4, rtol=1e-5)
    assert len(calls) == int(mask[0].flatten(1).any(0).sum())  # one call per tile with a live channel
    assert sum(calls) == int(mask.sum())  # each call convolves exactly its tile's live channels


def test_compute_tiles_grow_until_a_call_is_worth_it():
    from vrtk_plugins.ecg.sparse import MIN_TILE_MACS, compute_tile

    wide = nn.ConvTranspose2d(128, 128, 5, 2, 2, 1)  # 128*128*25*16^2 MACs per 16x16 tile: already enough
    assert compute_tile(wide, 16, (128, 192)) == 16
    narrow = nn.ConvTranspose2d(64, 64, 5, 2, 2, 1)
    assert compute_tile(narrow, 16, (128, 192)) == 32
    assert 64 * 64 * 25 * 16 * 16 < MIN_TILE_MACS <= 64 * 64 * 25 * 32 * 32
    assert compute_tile(nn.Conv2d(8, 8, 3), 16, (40, 24)) == 64  # stops once a tile covers the image


def test_channels_last_gather_is_exact():
    """The channels-last gather selects columns of the (pixels, channels) matrix; it must pick the values bit for
    bit and keep the layout, also for a region cut at the image's edge."""
    from vrtk_plugins.ecg.sparse import _gather

    x = torch.randn(2, 9, 7, 11).contiguous(memory_format=torch.channels_last)
    idx = torch.tensor([0, 3, 4, 8])
    picked = _gather(x, idx, 1, 6, 2, 11)
    assert torch.equal(picked, x[:, idx, 1:6, 2:11])
    assert picked.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(_gather(x, idx, 4, 12, 8, 16), x[:, idx, 4:, 8:])


@pytest.mark.parametrize("dead", [1, 6])
def test_channel_slicing_masks_instead_when_few_channels_are_dead(dead):
    """The per-channel path reads x unmasked: with few dead channels it zeroes them in place of a gather; with many
    it gathers the live ones. Either way the dead channels' values never reach the output."""
    from vrtk_plugins.ecg.sparse import channel_sliced

    conv = nn.ConvTranspose2d(8, 4, 5, 2, 2, 1)
    x = torch.randn(1, 8, 9, 9)
    channels = torch.ones(8, dtype=torch.bool)
    channels[:dead] = False
    with torch.no_grad():
        expected = conv(x * channels.float().view(1, -1, 1, 1))
        torch.testing.assert_close(channel_sliced(conv, x, channels), expected, atol=1e-5, rtol=1e-5)


def test_element_gates_keep_the_dense_kernel_unless_a_tile_is_set():
    wrapped = tiny(configs={"ecg": {"gate_tile": 0}})
    net = wrapped.net.eval()
    x = pad(images(1, 64))[0]
    calibrate(net, x, 0.6)
    with torch.no_grad():
        apply_options(net, {"ecg.sparse": True})
        net.g_a(x)
        assert not any(m._conv_ran_sparse for _, m in ecg_modules(net))
        apply_options(net, {"ecg.tile": 8})
        net.g_a(x)
        assert all(m._conv_ran_sparse for name, m in ecg_modules(net) if name.startswith("g_a"))
