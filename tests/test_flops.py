"""MAC counting (vrtk.flops): exact effective MACs against brute-force loops, dense MACs against torch's counter."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import TINY_KWARGS
from torch import nn

from vrtk.flops import conv2d_macs, conv_transpose2d_macs, count_macs, dense_kmacs_per_pixel, measure_codec_macs
from vrtk.zoo import BaseSpec, build_base


def brute_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """Loop over every output position and every tap; count the products whose input is inside and non-zero."""
    n_, c_in, h, w = x.shape
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    g = conv.groups
    per_group_in, per_group_out = c_in // g, conv.out_channels // g
    out_h = (h + 2 * p_h - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (w + 2 * p_w - d_w * (k_w - 1) - 1) // s_w + 1
    dense = effective = 0
    for n, grp, oh, ow in itertools.product(range(n_), range(g), range(out_h), range(out_w)):
        for ci, kh, kw in itertools.product(range(per_group_in), range(k_h), range(k_w)):
            dense += per_group_out
            ih, iw = oh * s_h - p_h + kh * d_h, ow * s_w - p_w + kw * d_w
            if 0 <= ih < h and 0 <= iw < w and x[n, grp * per_group_in + ci, ih, iw] != 0:
                effective += per_group_out
    return dense, effective


def brute_conv_transpose2d(conv: nn.ConvTranspose2d, x: torch.Tensor, out_shape) -> tuple[int, int]:
    """Loop over every output position and tap: output o reads input i through tap t iff o = i*s - p + t*d."""
    n_, c_in, h, w = x.shape
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    g = conv.groups
    per_group_in, per_group_out = c_in // g, conv.out_channels // g
    dense = n_ * c_in * per_group_out * k_h * k_w * h * w  # every input scattered through every tap
    effective = 0
    for n, grp, oh, ow in itertools.product(range(n_), range(g), range(out_shape[-2]), range(out_shape[-1])):
        for ci, kh, kw in itertools.product(range(per_group_in), range(k_h), range(k_w)):
            num_h, num_w = oh + p_h - kh * d_h, ow + p_w - kw * d_w
            if num_h % s_h or num_w % s_w:
                continue
            ih, iw = num_h // s_h, num_w // s_w
            if 0 <= ih < h and 0 <= iw < w and x[n, grp * per_group_in + ci, ih, iw] != 0:
                effective += per_group_out
    return dense, effective


def sparse_input(shape, zero_fraction: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    return x * (torch.rand(shape, generator=gen) >= zero_fraction)


CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2),  # g_a-like
    dict(in_channels=4, out_channels=3, kernel_size=3, stride=1, padding=1),  # h_s.4-like
    dict(in_channels=4, out_channels=4, kernel_size=3, stride=1, padding=0, dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=1, stride=2),
]
CONVT_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2, output_padding=1),  # g_s-like
    dict(in_channels=4, out_channels=3, kernel_size=3, stride=1, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=0, output_padding=1, groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1)),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("zeros", [0.0, 0.6, 1.0])
def test_conv2d_macs_match_brute_force(case, zeros):
    conv = nn.Conv2d(**CONV_CASES[case])
    x = sparse_input((2, 4, 7, 6), zeros, seed=case)
    with torch.no_grad():
        out = conv(x)
    assert conv2d_macs(conv, x, out) == brute_conv2d(conv, x)


@pytest.mark.parametrize("case", range(len(CONVT_CASES)))
@pytest.mark.parametrize("zeros", [0.0, 0.6, 1.0])
def test_conv_transpose2d_macs_match_brute_force(case, zeros):
    conv = nn.ConvTranspose2d(**CONVT_CASES[case])
    x = sparse_input((2, 4, 5, 6), zeros, seed=10 + case)
    with torch.no_grad():
        out = conv(x)
    assert conv_transpose2d_macs(conv, x) == brute_conv_transpose2d(conv, x, out.shape)


def test_effective_is_exact_not_a_density_estimate():
    """A zero block at the border saves fewer MACs than its share of elements: the count must see that."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.ones(1, 1, 6, 6)
    x[..., :, :3] = 0  # half the elements
    dense, effective = conv2d_macs(conv, x, conv(x))
    assert effective == brute_conv2d(conv, x)[1]
    assert effective != dense // 2


def flop_counter_macs(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"])
def test_dense_macs_agree_with_torch_flop_counter(arch):
    """Dense encoder/decoder MACs (convs + GDN + the context model's bare F.conv2d) equal torch.utils.flop_counter's
    count of the same compress / decompress calls."""
    kwargs = {"N": 8} if arch.startswith("cheng") else dict(TINY_KWARGS)
    torch.manual_seed(0)
    net = build_base(BaseSpec(arch, weights="random", arch_kwargs=kwargs))
    net.update(force=True)
    x = torch.rand(1, 3, 64, 64 if arch.startswith("cheng") else 128)  # the AR loop is slow: fewer positions
    macs = measure_codec_macs(net, x)
    with torch.no_grad():
        coded = net.compress(x)
        assert flop_counter_macs(lambda: net.compress(x)) == macs.encoder.dense
        assert flop_counter_macs(lambda: net.decompress(coded["strings"], coded["shape"])) == macs.decoder.dense
    # the autoregressive context model runs F.conv2d on context_prediction.weight outside any module call
    assert ("functional.conv2d" in macs.decoder.per_layer) == arch.startswith("cheng")


def test_relu_zeros_count_for_the_baseline_too(tiny_spec):
    """h_a/h_s convolutions after a ReLU get fewer effective MACs in the base model already."""
    net = build_base(tiny_spec)
    net.update(force=True)
    macs = measure_codec_macs(net, torch.rand(1, 3, 64, 64))
    d, e = macs.encoder.per_layer["h_a.2"]
    assert e < d
    per_pixel = macs.kmacs_per_pixel()
    assert set(per_pixel) == {"encoder_dense", "encoder_effective", "decoder_dense", "decoder_effective"}
    assert per_pixel["encoder_effective"] < per_pixel["encoder_dense"]
    dense = dense_kmacs_per_pixel(net, size=(64, 64))
    assert dense["encoder"] == pytest.approx(per_pixel["encoder_dense"])
    assert dense["decoder"] == pytest.approx(per_pixel["decoder_dense"])


def test_count_macs_uses_a_modules_own_vrtk_macs():
    class Costly(nn.Module):
        def forward(self, x):
            return x

        def vrtk_macs(self, inputs, output):
            return 7, 3

    net = nn.Sequential(Costly(), nn.Conv2d(1, 1, 1))
    with count_macs(net) as count:
        net(torch.ones(1, 1, 2, 2))
    assert count.per_layer["0"] == (7, 3)
    assert count.dense == 7 + 4 and count.effective == 3 + 4
