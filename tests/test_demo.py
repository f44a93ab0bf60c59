"""The README's main job: `vrtk demo` on the embedded variable-rate default model, offline."""

from __future__ import annotations

from conftest import run_cli


def test_demo_codes_an_image_and_compares_with_jpeg(tmp_path):
    code, out, err = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert len([f for f in files if f.endswith(".vrtk")]) == 4 and len([f for f in files if f.endswith(".png")]) == 4
    assert (tmp_path / "demo" / "target.vrtk").read_bytes()[:4] == b"VRTK"
    sizes = [(tmp_path / "demo" / f).stat().st_size for f in files if f.startswith("lambda-") and f.endswith(".vrtk")]
    assert len(set(sizes)) == 3  # three rates, three different files: the model really is variable-rate
    assert "JPEG" in out and "WebP" in out and "target 0.3 bpp" in out and "trainable params" in out
    code, _, err = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert code == 2 and "--force" in err  # never writes over earlier outputs silently


def test_the_demo_sums_up_a_long_command_chain():
    from vrtk.commands.demo import provenance

    assert provenance("vrtk run bm-finetune steps=10") == "made by `vrtk run bm-finetune steps=10`"
    chain = " && ".join(["vrtk run bm-finetune steps=9000"] * 20) + "; 180,000 steps in all"
    summary = provenance(chain)
    assert summary.startswith("made by 180,000 steps in all") and "config.json" in summary and len(summary) < 120
    assert "x" * 300 + "..." in provenance("x" * 400)  # no closing remark: cut, and said where the rest is
