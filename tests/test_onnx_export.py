"""``vrtk export --format onnx`` and ``--backend onnxruntime`` on tiny models: graphs, files across backends, CLI.

Tolerance: every graph must match the torch transform within 1e-4 of its output's largest magnitude
(``vrtk.export.folder.REL_TOL``) on random images of sizes it was not traced with, at rates it was not traced at;
measured differences are ~1e-7. Files are decoded exactly (same latents) across backends, the reconstructions then
differing by float noise only (< 1e-5).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_KWARGS, run_cli
from PIL import Image
from test_codec_roundtrip import make_rate_dependent

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from vrtk.api import Coder  # noqa: E402
from vrtk.container import parse  # noqa: E402
from vrtk.data import synthetic_images  # noqa: E402
from vrtk.errors import BitstreamError, RateError, VrtkError  # noqa: E402
from vrtk.export import ExportError  # noqa: E402
from vrtk.export.folder import REL_TOL, _transform_inputs, export_onnx  # noqa: E402
from vrtk.export.graphs import export_graph  # noqa: E402
from vrtk.model import load_model, save_model, wrap  # noqa: E402
from vrtk.plugin_manager import get_registry  # noqa: E402
from vrtk.rate import use_rate  # noqa: E402
from vrtk.zoo import BaseSpec  # noqa: E402

needs_ecg = pytest.mark.skipif("ecg" not in get_registry().injectors, reason="the ecg plugin is not installed")


def tiny_model(folder, arch: str, plugins: list[str], configs: dict | None = None, seed: int = 0):
    """A tiny model with rate-dependent modulators and ECG gates calibrated to close ~40 % of their inputs."""
    torch.manual_seed(seed)
    configs = dict(configs or {})
    if "ecg" in plugins:
        configs["ecg"] = {"init_sparsity": 0.4, **configs.get("ecg", {})}
    wrapped = wrap(BaseSpec(arch=arch, weights="random", arch_kwargs=dict(TINY_KWARGS)), plugins, configs)
    make_rate_dependent(wrapped.net)
    if "ecg" in plugins:  # the first training-mode forward calibrates every gate's alpha
        x = synthetic_images(1, 128, 128, seed=3)[0][None].float() / 255
        wrapped.net.train()
        with torch.no_grad(), use_rate(wrapped.net, wrapped.lambdas[0] if wrapped.lambdas else None):
            wrapped.net(x)
        wrapped.net.eval()
    wrapped.net.update(force=True)
    return load_model(save_model(wrapped, folder))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ECG + bm on bmshj2018-hyperprior, exported once through the CLI (the rate an input)."""
    if "ecg" not in get_registry().injectors:
        pytest.skip("the ecg plugin is not installed")
    root = tmp_path_factory.mktemp("onnx")
    tiny_model(root / "model", "bmshj2018-hyperprior", ["ecg", "bm"])
    results = {"name": "tiny", "results": {"lambda": [0.004, 0.04], "bpp": [0.25, 0.75], "psnr-rgb": [29.5, 33.25]},
               "vrtk": {"dataset": {"folder": "kodak", "images": 24}, "command": "vrtk eval tiny --data kodak"}}
    (root / "eval.json").write_text(json.dumps(results))
    code, out, err = run_cli("export", str(root / "model"), "-o", str(root / "export"), "--format", "onnx",
                             "--results", str(root / "eval.json"))
    assert code == 0, err
    assert "g_a.onnx, h_a.onnx, h_s.onnx, g_s.onnx" in out
    return root


@needs_ecg
@pytest.mark.parametrize("size, lmbda", [((64, 192), 0.0023), ((256, 128), 0.11)])
def test_each_graph_matches_torch_on_random_inputs(exported, size, lmbda):
    folder = exported / "export"
    wrapped = load_model(folder)
    names = ("g_a", "h_a", "h_s", "g_s")
    inputs = _transform_inputs(wrapped.net, names, size, lmbda, None, seed=7)
    gated = [m.gate.last_sparsity for n, m in wrapped.net.named_modules() if hasattr(m, "gate")]
    assert max(gated) > 0.1  # the gates really close inputs: the graphs are checked with masks that matter
    manifest = json.loads((folder / "export.json").read_text())
    for name in names:
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        feeds = {"x": inputs[name].numpy()}
        if manifest["graphs"][name]["rate_input"]:
            feeds["lmbda"] = np.array([lmbda], dtype=np.float64)
        got = torch.from_numpy(session.run(None, feeds)[0])
        with torch.no_grad(), use_rate(wrapped.net, lmbda):
            expected = getattr(wrapped.net, name)(inputs[name])
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= REL_TOL * expected.abs().max(), name


@needs_ecg
def test_graphs_hold_the_plugins_and_dynamic_sizes(exported):
    folder = exported / "export"
    manifest = json.loads((folder / "export.json").read_text())
    rate_inputs = {n: g["rate_input"] for n, g in manifest["graphs"].items()}
    assert rate_inputs == {"g_a": True, "h_a": False, "h_s": False, "g_s": True}  # bm sits after g_a, before g_s
    for name in ("g_a", "h_a", "h_s", "g_s"):
        model = onnx.load(str(folder / f"{name}.onnx"))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = {node.op_type for node in model.graph.node}
        for f in model.functions:
            ops |= {node.op_type for node in f.node}
        assert {"Sigmoid", "Greater"} <= ops, name  # ECG: omega = sigmoid(conv1d(GAP x^2)), mask = x^2 > th
        x = model.graph.input[0].type.tensor_type.shape.dim
        assert x[2].dim_param and x[3].dim_param, name  # height and width are symbolic
        inputs = [i.name for i in model.graph.input]
        assert inputs == (["x", "lmbda"] if rate_inputs[name] else ["x"])
    g_a_ops = {node.op_type for node in onnx.load(str(folder / "g_a.onnx")).graph.node}
    assert {"Sqrt", "Exp"} <= g_a_ops  # GDN's sqrt normalisation; bm's exp(MLP(log lambda))
    card = (folder / "model_card.md").read_text()
    assert "ecg" in card and "bm" in card and "kMAC/pixel" in card and "vrtk export" in card
    assert "0.0018 .. 0.18" in card  # the trained range
    assert "| 0.04 | 0.75 | 33.25 |" in card and "vrtk eval tiny --data kodak" in card  # the given results
    assert json.loads((folder / "model_card.json").read_text())["kmacs_per_pixel"]["decoder"] > 0


@needs_ecg
@pytest.mark.parametrize("lmbda", [0.0018, 0.0137])
def test_files_decode_across_backends(exported, tiny_images, lmbda):
    folder = str(exported / "export")
    torch_coder, onnx_coder = Coder(folder), Coder(folder, backend="onnxruntime")
    image = tiny_images[0]
    by_torch = torch_coder.compress(image, lmbda=lmbda).data
    by_onnx = onnx_coder.compress(image, lmbda=lmbda).data
    assert parse(by_torch).fingerprint == parse(by_onnx).fingerprint
    reference = torch_coder.decode(by_torch).tensor
    for data, decoder in ((by_torch, onnx_coder), (by_onnx, torch_coder), (by_onnx, onnx_coder)):
        assert (decoder.decode(data).tensor - reference).abs().max() < 1e-5
    assert abs(len(by_torch) - len(by_onnx)) <= 0.02 * len(by_torch)  # same codec, float noise in y only


@needs_ecg
def test_cli_compress_decompress_and_eval_on_onnxruntime(exported, tiny_images, tmp_path):
    folder = str(exported / "export")
    pixels = [img.mul(255).round().byte().permute(1, 2, 0).numpy() for img in tiny_images]
    (tmp_path / "images").mkdir()
    for i, p in enumerate(pixels[:2]):
        Image.fromarray(p).save(tmp_path / "images" / f"im{i}.png")
    src, coded = tmp_path / "images" / "im0.png", tmp_path / "im0.vrtk"
    code, out, err = run_cli("compress", str(src), "-o", str(coded), "--model", folder, "--backend", "onnxruntime",
                             "--lambda", "0.01")
    assert code == 0, err
    code, out, err = run_cli("decompress", str(coded), "-o", str(tmp_path / "back.png"), "--model", folder)
    assert code == 0, err  # decoded by torch
    results = {}
    for backend in ("torch", "onnxruntime"):
        target = tmp_path / f"{backend}.json"
        code, out, err = run_cli("eval", folder, "--data", str(tmp_path / "images"), "--lambda", "0.01",
                                 "--backend", backend, "--repeats", "1", "--no-macs", "--metrics", "psnr",
                                 "--no-progress", "-o", str(target))
        assert code == 0, err
        results[backend] = json.loads(target.read_text())
    assert results["onnxruntime"]["vrtk"]["backend"] == "onnxruntime"
    psnr = [r["results"]["psnr-rgb"][0] for r in results.values()]
    assert abs(psnr[0] - psnr[1]) < 1e-3


@needs_ecg
def test_onnxruntime_refuses_what_its_graphs_cannot_do(exported, tiny_images, tmp_path):
    folder = str(exported / "export")
    scaled = Coder(folder, options={"ecg.scale": 2.0}).compress(tiny_images[0], lmbda=0.01).data
    with pytest.raises(BitstreamError, match="exported with none"):
        Coder(folder, backend="onnxruntime").decode(scaled)
    with pytest.raises(VrtkError, match="exported with the options"):
        Coder(folder, backend="onnxruntime", options={"ecg.scale": 2.0})
    Image.fromarray(tiny_images[0].mul(255).byte().permute(1, 2, 0).numpy()).save(tmp_path / "x.png")
    code, _, err = run_cli("compress", str(tmp_path / "x.png"), "-o", str(tmp_path / "x.vrtk"), "--backend",
                           "onnxruntime")
    assert code == 2 and "vrtk export" in err  # `default` is not an export folder
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_onnx(load_model(folder), exported / "export")


def test_mean_scale_with_gain_takes_the_rate_in_every_graph(tmp_path, tiny_images):
    """gain on mbt2018-mean: gains on y and z, and h_a reads y ungained, so all four graphs take lambda."""
    wrapped = tiny_model(tmp_path / "model", "mbt2018-mean", ["gain"])
    manifest = export_onnx(wrapped, tmp_path / "export")
    assert manifest["coding"] == "mean-scale-hyperprior"
    assert all(g["rate_input"] for g in manifest["graphs"].values())
    assert all(g["max_rel_error"] <= REL_TOL for g in manifest["graphs"].values())
    folder = str(tmp_path / "export")
    for lmbda in (0.0025, 0.071):  # between trained lambdas: the graph interpolates the gains itself
        data = Coder(folder, backend="onnxruntime").compress(tiny_images[1], lmbda=lmbda).data
        torch_coder = Coder(folder)
        expected = torch_coder.decode(torch_coder.compress(tiny_images[1], lmbda=lmbda).data).tensor
        assert (torch_coder.decode(data).tensor - expected).abs().max() < 1e-5


def test_a_fixed_rate_export_codes_at_that_rate_only(tmp_path, tiny_images):
    wrapped = tiny_model(tmp_path / "model", "bmshj2018-factorized", ["bm"])
    manifest = export_onnx(wrapped, tmp_path / "export", lmbda=0.013)
    assert manifest["lambda"] == 0.013 and list(manifest["graphs"]) == ["g_a", "g_s"]
    assert not any(g["rate_input"] for g in manifest["graphs"].values())
    folder = str(tmp_path / "export")
    coder = Coder(folder, backend="onnxruntime")
    data = coder.compress(tiny_images[0]).data  # the folder's only rate
    assert parse(data).lmbda == 0.013
    assert (Coder(folder).decode(data).tensor - coder.decode(data).tensor).abs().max() < 1e-5
    with pytest.raises(RateError):
        coder.compress(tiny_images[0], lmbda=0.05)
    with pytest.raises(ExportError, match="outside|no rate-dependent"):
        export_onnx(wrap(BaseSpec(arch="bmshj2018-factorized", weights="random", arch_kwargs=dict(TINY_KWARGS))),
                    tmp_path / "plain", lmbda=0.01)


@needs_ecg
@pytest.mark.parametrize("gate_tile", [4, -1], ids=["tile4", "channel"])
@pytest.mark.parametrize("name", ["g_a", "h_a", "h_s", "g_s"])
def test_tile_and_channel_gates_export_with_dynamic_sizes(tmp_path, gate_tile, name):
    """Every transform, h_s included: its input z has any size, so a 4x4 tile may or may not divide it; the
    exported graph takes one path for every size and matches torch on sizes the sample did not have."""
    wrapped = tiny_model(tmp_path / "m", "bmshj2018-hyperprior", ["ecg"], {"ecg": {"gate_tile": gate_tile}})
    net = wrapped.net
    transform = getattr(net, name)
    sample = _transform_inputs(net, (name,), (128, 192), None, None, seed=0)[name]
    export_graph(name, transform, sample, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    for size in ((64, 64), (192, 320), (320, 448)):  # y of 4x4 (tiles cut by the edge), 12x20; z of 1x1, 3x5, 5x7
        x = _transform_inputs(net, (name,), size, None, None, seed=5)[name]
        with torch.no_grad():
            expected = transform(x)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= REL_TOL * expected.abs().max()


class NotExportable(torch.nn.Module):
    """Python control flow on a tensor's value: torch runs it, no graph can hold it."""

    def forward(self, x):
        return x * 2 if float(x.sum()) > 0 else x


def test_unsupported_modules_and_codecs_are_named(tmp_path):
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-factorized", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    wrapped.net.g_s = torch.nn.Sequential(NotExportable(), wrapped.net.g_s)
    wrapped.net.update(force=True)
    with pytest.raises(ExportError, match=r"g_s: module g_s\.0 \(.*NotExportable\) does not export"):
        export_onnx(wrapped, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written
    mbt = wrap(BaseSpec(arch="mbt2018", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    with pytest.raises(ExportError, match="mbt2018.*own compress"):
        export_onnx(mbt, tmp_path / "mbt")
