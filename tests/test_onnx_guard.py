"""The scale-index guard and the codec view every backend codes through (no onnxruntime needed).

A decoder whose hyper-decoder output differs from the encoder's in the last bits picks another entropy-coder table
for any element that lies between the two values; the guard carries the encoder's choice for those elements.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_KWARGS
from test_codec_roundtrip import tiny_variable_rate_model

from vrtk.api import Coder
from vrtk.codec import pad
from vrtk.container import Container, parse
from vrtk.errors import BitstreamError
from vrtk.export.guard import MARGIN, apply_guard, boundaries, make_guard, near_boundary
from vrtk.export.view import CodecView, coding_of
from vrtk.model import wrap
from vrtk.rate import use_rate
from vrtk.zoo import BaseSpec


@pytest.fixture
def model(tmp_path):
    return tiny_variable_rate_model(tmp_path / "bm", ["bm"])


def straddling_scales(conditional, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder's, decoder's) scales: random, and every 4th element put 3e-6 (log) below a table boundary for
    the encoder and 3e-6 above it for the decoder, as two backends' float differences can."""
    gen = torch.Generator().manual_seed(seed)
    table = conditional.scale_table
    enc = torch.exp(torch.empty(1, 4, n).uniform_(math.log(0.05), math.log(50), generator=gen))
    picks = torch.randint(1, len(table) - 1, (n,), generator=gen)
    enc[0, 0] = table[picks] * math.exp(-3e-6)
    dec = enc.clone()
    dec[0, 0] = table[picks] * math.exp(3e-6)
    return enc, dec


def test_guard_restores_the_encoders_indexes(model):
    gc = model.net.gaussian_conditional
    edges = boundaries(gc)
    enc, dec = straddling_scales(gc)
    i_enc, i_dec = gc.build_indexes(enc), gc.build_indexes(dec)
    assert (i_enc != i_dec).sum() == enc.shape[-1]  # without a guard every straddling element differs
    guard = make_guard(enc[0], edges)
    assert torch.equal(gc.build_indexes(apply_guard(dec[0], guard, edges)[None]), i_enc)
    assert len(guard) <= 2 + 3 * enc.shape[-1]  # version, count, then a varint per guarded element
    # only elements near a boundary are guarded: scales far from every boundary cost nothing
    far = torch.sqrt(gc.scale_table[1:] * gc.scale_table[:-1]).reshape(1, -1)  # geometric midpoints
    assert make_guard(far, edges) == b""
    assert not near_boundary(torch.tensor([-1.0, 0.0]), edges, MARGIN).any()


def test_the_lower_bound_is_guarded_like_any_boundary(model):
    gc = model.net.gaussian_conditional
    edges = boundaries(gc)
    bound = float(gc.lower_bound_scale.bound)
    enc = torch.tensor([[bound * math.exp(-2e-6), bound * math.exp(2e-6), 1e-4]])
    dec = torch.tensor([[bound * math.exp(2e-6), bound * math.exp(-2e-6), 1e-4]])
    assert not torch.equal(gc.build_indexes(enc), gc.build_indexes(dec))
    fixed = apply_guard(dec[0], make_guard(enc[0], edges), edges)
    assert torch.equal(gc.build_indexes(fixed[None]), gc.build_indexes(enc))


@pytest.mark.parametrize("damage, message", [
    (lambda g: b"\x07" + g[1:], "guard version"),
    (lambda g: g[:-1], "ends inside a number|left over"),
    (lambda g: g + b"\x00", "left over"),
    (lambda g: g[:1] + b"\xff\xff\xff\xff\x0f", "guarded elements"),
    (lambda g: bytes([1, 2, 0, 0]), "repeated"),
    (lambda g: bytes([1, 1, 0xC8, 0x01]), "outside the latent"),
])
def test_damaged_guards_are_refused(model, damage, message):
    gc = model.net.gaussian_conditional
    edges = boundaries(gc)
    enc, _ = straddling_scales(gc)
    with pytest.raises(BitstreamError, match=message):
        apply_guard(enc[0, :, :20], damage(make_guard(enc[0], edges)), edges)


def test_container_writes_version_2_only_with_a_guard():
    base = dict(fingerprint="ab" * 32, lmbda=0.01, width=90, height=70, mode="RGB", shape=(2, 2),
                strings=[[b"yyyy"], [b"zz"]])
    plain = Container(**base).to_bytes()
    assert plain[4:6] == b"\x00\x01" and parse(plain).guard == b""
    guarded = Container(**base, guard=b"\x01\x01\x05\x03").to_bytes()
    assert guarded[4:6] == b"\x00\x02" and len(guarded) == len(plain) + 4 + 4
    back = parse(guarded)
    assert (back.version, back.guard, back.strings) == (2, b"\x01\x01\x05\x03", base["strings"])
    for cut in range(len(guarded) - 12, len(guarded)):  # the guard and its length are checked like the rest
        with pytest.raises(BitstreamError):
            parse(guarded[:cut])


@torch.no_grad()
def test_view_codes_exactly_like_compressai(model, tiny_images):
    """The torch view runs the architecture's own compress/decompress: same strings, same reconstruction."""
    net = model.net
    view = CodecView(net)
    assert view.coding == "scale-hyperprior"
    x, _ = pad(tiny_images[1][None])
    with use_rate(net, 0.01):
        ref = net.compress(x)
        out = view.compress(x)
        assert out["strings"] == ref["strings"] and tuple(out["shape"]) == tuple(ref["shape"])
        assert torch.equal(view.decompress(out["strings"], out["shape"], out["guard"])["x_hat"],
                           net.decompress(ref["strings"], ref["shape"])["x_hat"])


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_torch_view_runs_the_image_transforms_channels_last(model, tiny_images, channels_last):
    """g_a and g_s get channels-last input (faster oneDNN convolutions; benchmarks/layout_speed.py), h_a and h_s
    NCHW (the decoder's scale lookup must match the encoder's); either way the same file and reconstruction."""
    net = model.net
    layouts = {}

    def record(name):
        def hook(_module, args):
            layouts.setdefault(name, args[0].is_contiguous(memory_format=torch.channels_last)
                               and not args[0].is_contiguous())
        return hook

    hooks = [getattr(net, name).register_forward_pre_hook(record(name)) for name in ("g_a", "h_a", "h_s", "g_s")]
    x, _ = pad(tiny_images[2][None])
    try:
        with use_rate(net, 0.01):
            out = CodecView(net, channels_last=channels_last).compress(x)
            x_hat = CodecView(net, channels_last=channels_last).decompress(out["strings"], out["shape"],
                                                                            out["guard"])["x_hat"]
            ref = net.compress(x)
            ref_hat = net.decompress(ref["strings"], ref["shape"])["x_hat"]
    finally:
        for h in hooks:
            h.remove()
    assert layouts == {"g_a": channels_last, "h_a": False, "h_s": False, "g_s": channels_last}
    assert out["strings"] == ref["strings"]
    assert x_hat.is_contiguous() and torch.allclose(x_hat, ref_hat, atol=1e-6)


def test_old_files_without_a_guard_still_decode(model, tiny_images):
    """A version-1 file (what vrtk wrote before the guard) decodes to what the model's own decoder gives."""
    coder = Coder(model)
    x, _ = pad(tiny_images[0][None])
    with torch.no_grad(), use_rate(model.net, 0.02):
        out = model.net.compress(x)
        expected = model.net.decompress(out["strings"], out["shape"])["x_hat"]
    old = Container(fingerprint=coder.fingerprint, lmbda=0.02, width=90, height=70, mode="RGB",
                    shape=tuple(int(d) for d in out["shape"]), strings=out["strings"]).to_bytes()
    assert old[4:6] == b"\x00\x01"
    assert torch.equal(coder.decode(old).tensor, _crop(expected))


def _crop(x_hat: torch.Tensor) -> torch.Tensor:
    from compressai.ops import compute_padding

    from vrtk.codec import unpad

    _, unpadding = compute_padding(70, 90, min_div=64)
    return unpad(x_hat, unpadding).clamp(0, 1)[0]


@torch.no_grad()
def test_guard_makes_a_perturbed_decoder_decode_the_same_latents(model, tiny_images):
    """Encoder and decoder whose hyper-decoders differ by 6e-6 (log) on elements near table boundaries: without
    the guard the decoder picks other tables and decodes other latents; with it, the very same ones."""
    net = model.net
    gc = net.gaussian_conditional
    table = torch.log(gc.scale_table.double())

    def hyper_decoder(side: float):
        def h_s(z_hat):  # snap every 7th scale to just below (encoder) or above (decoder) its nearest boundary
            s = net.h_s(z_hat)
            flat = s.reshape(-1)
            nearest = (torch.log(flat.double().clamp_min(1e-9))[:, None] - table[None, :-1]).abs().argmin(1)
            picked = torch.arange(0, flat.numel(), 7)
            flat[picked] = (table[nearest[picked]] + side * 3e-6).exp().float()
            return s
        return h_s

    transforms = {name: getattr(net, name) for name in ("g_a", "h_a", "g_s")}
    encoder = CodecView(net, {**transforms, "h_s": hyper_decoder(-1.0)})
    decoder = CodecView(net, {**transforms, "h_s": hyper_decoder(+1.0)})
    latents = []
    gc_decompress = gc.decompress
    gc.decompress = lambda *a, **k: latents.append(gc_decompress(*a, **k)) or latents[-1]
    try:
        x, _ = pad(tiny_images[2][None])
        with use_rate(net, 0.01):
            coded = encoder.compress(x)
            assert coded["guard"][0]  # the snapped elements are guarded
            encoder.decompress(coded["strings"], coded["shape"], coded["guard"])
            decoder.decompress(coded["strings"], coded["shape"], coded["guard"])
            decoder.decompress(coded["strings"], coded["shape"])  # the same file, guard dropped
    finally:
        del gc.decompress
    same, guarded, unguarded = latents
    assert torch.equal(same, guarded)
    assert not torch.equal(same, unguarded)


def test_unsupported_codings_pass_through_unguarded(tmp_path):
    torch.manual_seed(0)
    mbt = wrap(BaseSpec(arch="mbt2018", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    assert coding_of(mbt.net) is None
    view = CodecView(mbt.net)
    with pytest.raises(BitstreamError, match="index guard"):
        view.decompress([[b""], [b""]], (1, 1), guard=b"\x01\x00")
