"""The Python API: vrtk.compress / vrtk.decompress on paths, PIL images and tensors; rate rules; refusals."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from conftest import TINY_KWARGS
from PIL import Image
from test_codec_roundtrip import tiny_variable_rate_model

import vrtk
from vrtk import api
from vrtk.container import parse
from vrtk.errors import BitstreamError, ImageError, PluginError, RateError
from vrtk.model import save_model, wrap
from vrtk.plugin_manager import get_registry
from vrtk.zoo import BaseSpec


@pytest.fixture
def bm_dir(tmp_path):
    tiny_variable_rate_model(tmp_path / "bm", ["bm"])
    return str(tmp_path / "bm")


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return tensor.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]))


def test_compress_and_decompress_from_the_package(bm_dir, tiny_images, tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(to_uint8(tiny_images[0])).save(path)
    data = vrtk.compress(str(path), bm_dir, lmbda=0.02)
    assert isinstance(data, bytes) and data[:4] == b"VRTK"
    image = vrtk.decompress(data, bm_dir)
    assert image.size == (90, 70) and image.mode == "RGB"
    (tmp_path / "x.vrtk").write_bytes(data)
    assert np.array_equal(np.asarray(vrtk.decompress(tmp_path / "x.vrtk", bm_dir)), np.asarray(image))
    # a PIL image and a tensor of the same pixels code to the same bytes
    assert vrtk.compress(Image.open(path), bm_dir, lmbda=0.02) == data
    assert vrtk.compress(torch.from_numpy(to_uint8(tiny_images[0])).permute(2, 0, 1), bm_dir, lmbda=0.02) == data


def test_grayscale_comes_back_grayscale(bm_dir, tiny_images):
    gray = tiny_images[1][:1]  # (1, H, W)
    data = vrtk.compress(gray, bm_dir, quality=5)
    assert parse(data).mode == "L"
    image = vrtk.decompress(data, bm_dir)
    assert image.mode == "L" and image.size == (90, 70)
    pil_gray = Image.fromarray(to_uint8(tiny_images[1])[..., 0], "L")
    assert parse(vrtk.compress(pil_gray, bm_dir, quality=5)).mode == "L"


def test_alpha_is_dropped_with_a_warning(bm_dir, tiny_images):
    rgba = Image.fromarray(to_uint8(tiny_images[0])).convert("RGBA")
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        data = vrtk.compress(rgba, bm_dir, lmbda=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vrtk.compress(rgba.convert("RGB"), bm_dir, lmbda=0.01) == data


@pytest.mark.parametrize("size", [(1, 1), (64, 64), (129, 65), (200, 3)])
def test_any_size_pads_and_crops_back(bm_dir, size):
    width, height = size
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(width))
    decoded = api.decompress_tensor(vrtk.compress(image, bm_dir, lmbda=0.05), bm_dir)
    assert decoded.tensor.shape == (3, height, width)


def test_rate_options_and_their_errors(bm_dir, tiny_images):
    coder = api.Coder(bm_dir)
    image = tiny_images[0]
    with pytest.raises(RateError, match=r"outside the trained range \[0.0018, 0.18\]"):
        coder.compress(image, lmbda=0.5)
    with pytest.raises(RateError, match="1..8"):
        coder.compress(image, quality=9)
    with pytest.raises(RateError, match="one rate"):
        coder.compress(image, lmbda=0.01, quality=3)
    with pytest.raises(RateError, match="one rate"):
        coder.compress(image, lmbda=0.01, target_bpp=0.5)
    with pytest.raises(RateError, match="positive"):
        coder.compress(image, lmbda=float("nan"))
    result = coder.compress(image)
    assert result.lmbda == pytest.approx(coder.wrapped.middle_lambda())
    assert any("middle" in note for note in result.notes)


@pytest.fixture
def fixed_dir(tmp_path):
    """A plain base model saved with one trained lambda, as `vrtk run` leaves a fixed-rate model."""
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    wrapped.lambdas = [0.013]
    wrapped.net.update(force=True)
    return str(save_model(wrapped, tmp_path / "fixed"))


def test_fixed_rate_model_needs_no_rate(fixed_dir, tiny_images):
    data = vrtk.compress(tiny_images[0], fixed_dir)
    assert parse(data).lmbda is None
    assert vrtk.decompress(data, fixed_dir).size == (90, 70)
    assert vrtk.compress(tiny_images[0], fixed_dir, lmbda=0.013) == data
    with pytest.raises(RateError, match=r"fixed rate \(lambda 0.013\)"):
        vrtk.compress(tiny_images[0], fixed_dir, lmbda=0.02)
    with pytest.raises(RateError, match="cannot aim at a bpp"):
        vrtk.compress(tiny_images[0], fixed_dir, target_bpp=0.5)


def test_another_model_is_refused(bm_dir, fixed_dir, tmp_path, tiny_images):
    data = vrtk.compress(tiny_images[0], bm_dir, lmbda=0.01)
    with pytest.raises(BitstreamError, match="another model"):
        vrtk.decompress(data, fixed_dir)
    other = tiny_variable_rate_model(tmp_path / "other", ["bm"], seed=1)
    with pytest.raises(BitstreamError, match="another model"):
        vrtk.decompress(data, other)


def test_header_fields_are_checked_against_the_model(bm_dir, tiny_images):
    data = bytearray(vrtk.compress(tiny_images[0], bm_dir, lmbda=0.01))
    struct.pack_into(">d", data, 46, 0.5)  # a rate this model was not trained for
    with pytest.raises(BitstreamError, match="rate does not fit"):
        vrtk.decompress(recrc(bytes(data)), bm_dir)
    data = bytearray(vrtk.compress(tiny_images[0], bm_dir, lmbda=0.01))
    struct.pack_into(">I", data, 54, 1000)  # width 1000 does not match the coded latent (2 x 2)
    with pytest.raises(BitstreamError, match="latent shape"):
        vrtk.decompress(recrc(bytes(data)), bm_dir)
    with pytest.raises(BitstreamError, match="checksum"):
        vrtk.decompress(bytes(data), bm_dir)


def test_bad_inputs_are_clear_errors(bm_dir, tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        vrtk.compress(tmp_path / "missing.png", bm_dir)
    with pytest.raises(ImageError, match="one image at a time"):
        vrtk.compress(torch.rand(2, 3, 8, 8), bm_dir)
    with pytest.raises(ImageError, match="NaN"):
        vrtk.compress(torch.full((3, 8, 8), float("nan")), bm_dir)
    with pytest.raises(ImageError, match="cannot code a list"):
        vrtk.compress([1, 2], bm_dir)
    with pytest.raises(BitstreamError, match="no such file"):
        vrtk.decompress(tmp_path / "missing.vrtk", bm_dir)


@pytest.mark.skipif("ecg" not in get_registry().injectors, reason="the ecg plugin is not installed")
def test_decoding_options_travel_in_the_header(tmp_path, tiny_images):
    folder = tmp_path / "ecg-bm"
    # thresholds above 0 (the paper's alpha_init is 0, and ecg.scale times 0 changes nothing)
    tiny_variable_rate_model(folder, ["ecg", "bm"], configs={"ecg": {"alpha_init": 1e-4}})
    image = tiny_images[0]
    plain = api.Coder(str(folder)).compress(image, lmbda=0.02).data
    scaled = api.Coder(str(folder), options={"ecg.scale": 4.0}).compress(image, lmbda=0.02).data
    assert parse(scaled).options == {"ecg.scale": 4.0} and parse(plain).options == {}
    # a fresh decoder applies the file's option: same result as coding and decoding with the option set
    reference = api.Coder(str(folder), options={"ecg.scale": 4.0})
    with_option = api.Coder(str(folder)).decode(scaled).tensor
    assert torch.equal(with_option, reference.decode(scaled).tensor)
    assert (with_option - api.Coder(str(folder)).decode(plain).tensor).abs().max() > 1e-3
    # a model that has an option applied will not silently decode a file made without it
    with pytest.raises(BitstreamError, match="freshly loaded model"):
        reference.decode(plain)
    with pytest.raises(PluginError, match="no plugin of this model takes"):
        api.Coder(str(folder), options={"nosuch.option": 1})
