"""Odd and hostile image files: a clear ImageError or a sensible conversion, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vrtk.errors import ImageError
from vrtk.images import MAX_PIXELS, load_image


def _rgb(h=20, w=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_values(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.array_equal((img.tensor * 255).round().byte().permute(1, 2, 0).numpy(), arr)


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"hello, not an image", "not a readable image")])
def test_empty_and_non_images(tmp_path, content, message):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(tmp_path / "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
    path = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(_rgb(64, 64)).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated|not a readable image"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_one_pixel_image(tmp_path):
    Image.fromarray(_rgb(1, 1)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").tensor.shape == (3, 1, 1)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")  # tiny file, huge declared size
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(ImageError, match="larger than|not a readable image"):
        load_image(tmp_path / "bomb.png")


def test_sixteen_bit_grayscale(tmp_path):
    arr = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.mode == "L" and "16-bit" in " ".join(img.notes)
    assert abs(float(img.tensor[0].max()) - arr.max() / 65535) < 1 / 255


def test_grayscale_palette_cmyk_rgba(tmp_path):
    Image.fromarray(_rgb()[..., 0]).save(tmp_path / "l.png")
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray(np.dstack([_rgb(), np.full((20, 30), 128, np.uint8)])).save(tmp_path / "a.png")
    assert load_image(tmp_path / "l.png").mode == "L"
    assert load_image(tmp_path / "p.png").mode == "RGB"
    cmyk = load_image(tmp_path / "c.jpg")
    assert cmyk.mode == "RGB" and "CMYK" in " ".join(cmyk.notes)
    rgba = load_image(tmp_path / "a.png")
    assert rgba.tensor.shape[0] == 3 and "alpha" in " ".join(rgba.notes)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.size == (20, 30) and "EXIF" in " ".join(loaded.notes)
