"""``vrtk compress`` / ``vrtk decompress`` run in-process on real files: rates, image kinds, refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_codec_roundtrip import forward_reconstruction, tiny_variable_rate_model

from vrtk.container import parse


@pytest.fixture
def setup(tmp_path, tiny_images):
    """A bm model folder and a few images of different kinds."""
    model = tiny_variable_rate_model(tmp_path / "model", ["bm"])
    pixels = [img.mul(255).round().byte().permute(1, 2, 0).numpy() for img in tiny_images]
    Image.fromarray(pixels[0]).save(tmp_path / "rgb.png")
    Image.fromarray(pixels[1][..., 0], "L").save(tmp_path / "gray.png")
    Image.fromarray(pixels[2]).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(pixels[0]).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(pixels[1][..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grayscale
    return tmp_path, str(tmp_path / "model"), model


def test_three_rates_through_the_cli(setup):
    tmp, model, wrapped = setup
    src = tmp / "rgb.png"
    sizes = []
    for rate in (["--lambda", "0.003"], ["--rate-quality", "4.5"], ["--lambda", "0.15"]):
        out = tmp / f"rgb{rate[1]}.vrtk"
        code, stdout, stderr = run_cli("compress", str(src), "-o", str(out), "--model", model, *rate)
        assert code == 0, stderr
        assert "90x70 RGB" in stdout and "bpp" in stdout
        png = tmp / f"rgb{rate[1]}.png"
        code, stdout, stderr = run_cli("decompress", str(out), "-o", str(png), "--model", model)
        assert code == 0, stderr
        header = parse(out.read_bytes())
        decoded = np.asarray(Image.open(png))
        assert decoded.shape == (70, 90, 3)
        original = torch.from_numpy(np.array(Image.open(src))).permute(2, 0, 1).float() / 255
        expected = forward_reconstruction(wrapped.net, original, header.lmbda)
        expected = expected.mul(255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1  # rounding at .5 only
        sizes.append(out.stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]


def test_image_kinds_and_a_folder_of_outputs(setup):
    tmp, model, _ = setup
    names = ["rgb", "gray", "alpha", "palette", "deep"]
    inputs = [str(tmp / f"{n}.png") for n in names]
    code, stdout, stderr = run_cli("compress", *inputs, "-o", str(tmp / "coded"), "--model", model,
                                   "--lambda", "0.01", "--json")
    assert code == 0, stderr
    rows = {row["input"]: row for row in json.loads(stdout)["files"]}
    assert [rows[i]["mode"] for i in inputs] == ["RGB", "L", "RGB", "RGB", "L"]
    assert "alpha channel dropped" in stderr and "16-bit" in stderr
    coded = [str(tmp / "coded" / f"{n}.vrtk") for n in names]
    code, stdout, stderr = run_cli("decompress", *coded, "-o", str(tmp / "back"), "--model", model)
    assert code == 0, stderr
    modes = {n: Image.open(tmp / "back" / f"{n}.png").mode for n in names}
    assert modes == {"rgb": "RGB", "gray": "L", "alpha": "RGB", "palette": "RGB", "deep": "L"}
    assert all(Image.open(tmp / "back" / f"{n}.png").size == (90, 70) for n in names)


def test_outputs_are_never_overwritten_without_force(setup):
    tmp, model, _ = setup
    src, out = str(tmp / "rgb.png"), str(tmp / "rgb.vrtk")
    args = ("--model", model, "--lambda", "0.01")
    assert run_cli("compress", src, "-o", out, *args)[0] == 0
    before = (tmp / "rgb.vrtk").read_bytes()
    code, _, stderr = run_cli("compress", src, "-o", out, "--model", model, "--lambda", "0.1")
    assert code == 2 and "--force" in stderr and (tmp / "rgb.vrtk").read_bytes() == before
    assert run_cli("compress", src, "-o", out, "--model", model, "--lambda", "0.1", "--force")[0] == 0
    assert (tmp / "rgb.vrtk").read_bytes() != before
    code, _, stderr = run_cli("compress", src, "-o", src, *args, "--force")
    assert code == 2 and "overwrite the input" in stderr
    code, _, stderr = run_cli("decompress", out, "-o", out, "--model", model, "--force")
    assert code == 2 and "overwrite the input" in stderr
    (tmp / "sub").mkdir()
    (tmp / "sub" / "rgb.png").write_bytes((tmp / "rgb.png").read_bytes())
    code, _, stderr = run_cli("compress", src, str(tmp / "sub" / "rgb.png"), "-o", str(tmp / "many"), *args)
    assert code == 2 and "both be written" in stderr
    assert not list(tmp.glob("**/.*.tmp"))  # no temporary file left behind


def test_damage_and_model_mismatch_are_clear_errors(setup, tmp_path):
    tmp, model, _ = setup
    out = tmp / "rgb.vrtk"
    assert run_cli("compress", str(tmp / "rgb.png"), "-o", str(out), "--model", model, "--lambda", "0.01")[0] == 0
    data = out.read_bytes()
    cases = {
        "flip.vrtk": (data[:40] + bytes([data[40] ^ 1]) + data[41:], "checksum mismatch"),
        "cut.vrtk": (data[:-10], "truncated"),
        "newer.vrtk": (data[:4] + struct.pack(">H", 99) + data[6:], "newer"),
        "png.vrtk": ((tmp / "rgb.png").read_bytes(), "not a .vrtk file"),
    }
    for name, (content, message) in cases.items():
        (tmp / name).write_bytes(content)
        code, _, stderr = run_cli("decompress", str(tmp / name), "-o", str(tmp / f"{name}.png"), "--model", model)
        assert code == 2 and message in stderr, (name, stderr)
        assert not (tmp / f"{name}.png").exists()
    other = tiny_variable_rate_model(tmp_path / "other", ["gain"])
    del other
    code, _, stderr = run_cli("decompress", str(out), "-o", str(tmp / "x.png"), "--model", str(tmp_path / "other"))
    assert code == 2 and "another model" in stderr


def test_rate_errors_from_the_cli(setup):
    tmp, model, _ = setup
    src = str(tmp / "rgb.png")
    code, _, stderr = run_cli("compress", src, "-o", str(tmp / "a.vrtk"), "--model", model, "--lambda", "1.0")
    assert code == 2 and "outside the trained range [0.0018, 0.18]" in stderr
    code, _, stderr = run_cli("compress", src, "-o", str(tmp / "a.vrtk"), "--model", model, "--rate-quality", "0.5")
    assert code == 2 and "1..8" in stderr
    code, _, _ = run_cli("compress", src, "-o", str(tmp / "a.vrtk"), "--lambda", "0.01", "--rate-quality", "2")
    assert code != 0  # argparse: mutually exclusive
    code, _, stderr = run_cli("compress", str(tmp / "nope.png"), "-o", str(tmp / "a.vrtk"), "--model", model)
    assert code == 2 and "no such file" in stderr
    code, _, stderr = run_cli("decompress", str(tmp / "nope.vrtk"), "-o", str(tmp / "a.xyz"), "--model", model)
    assert code == 2 and "image format" in stderr
