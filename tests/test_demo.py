"""The README's main job: `vrtk demo` on the embedded default model, offline."""

from __future__ import annotations

from conftest import run_cli

from vrtk.zoo import default_model_info


def test_demo_codes_an_image_and_compares_with_jpeg(tmp_path):
    code, out, err = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    assert (tmp_path / "demo" / "demo.vrtk").read_bytes()[:4] == b"VRTK"
    assert (tmp_path / "demo" / "demo-decoded.png").is_file()
    assert "PSNR" in out and "JPEG (Pillow)" in out and "trainable params" in out
    assert f"lambda {default_model_info()['lambda']}" in out
    code, _, err = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert code == 2 and "--force" in err  # never writes over earlier outputs silently
