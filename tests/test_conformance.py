"""The conformance matrix every installed plugin must pass, on tiny CompressAI models.

1. With the base frozen only the plugin's own parameters change in training.
2. A delta checkpoint saved and loaded gives back exactly the same model.
3. compress -> decompress with CompressAI's real entropy coder reproduces forward's reconstruction at the same rate.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_KWARGS

from vrtk.codec import pad
from vrtk.injection import adapters
from vrtk.model import load_model, save_model, trainable_setup, wrap
from vrtk.plugin_manager import Registry, get_registry
from vrtk.rate import use_rate
from vrtk.zoo import BaseSpec

INJECTORS = sorted(Registry(autoload=True).injectors)
ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean"]


def _tiny_wrapped(arch: str, plugin: str, tmp_path):
    """A tiny base saved to disk (so deltas can be rebuilt), wrapped with ``plugin``."""
    from vrtk.zoo import build_base

    torch.manual_seed(0)
    base_file = tmp_path / "base.pt"
    torch.save(build_base(BaseSpec(arch, weights="random", arch_kwargs=dict(TINY_KWARGS))).state_dict(), base_file)
    spec = BaseSpec(arch, weights=str(base_file), arch_kwargs=dict(TINY_KWARGS))
    return wrap(spec, [plugin])


def _train_steps(wrapped, images: torch.Tensor, steps: int = 3) -> None:
    from compressai.losses import RateDistortionLoss

    registry = get_registry()
    net = wrapped.net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    lmbda = wrapped.middle_lambda() or 0.01
    loss_fn = RateDistortionLoss(lmbda=lmbda)
    for step in range(steps):
        with use_rate(net, lmbda, registry):
            out = net(images)
        loss = loss_fn(out, images)["loss"]
        for _, terms in registry.call("vrtk_loss_terms", model=net, step=step):
            loss = loss + sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _batch(tiny_images) -> torch.Tensor:
    return torch.stack([img[:, :64, :64] for img in tiny_images])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("plugin", INJECTORS)
def test_only_plugin_parameters_train(plugin, arch, tmp_path, tiny_images):
    wrapped = _tiny_wrapped(arch, plugin, tmp_path)
    trainable_setup(wrapped, "plugins")
    adapter_ids = {id(p) for _, a in adapters(wrapped.net) for p in a.adapter_params()}
    trainable = [n for n, p in wrapped.net.named_parameters() if p.requires_grad and not n.endswith("quantiles")]
    assert trainable and all(id(dict(wrapped.net.named_parameters())[n]) in adapter_ids for n in trainable)
    before = {k: v.clone() for k, v in wrapped.net.state_dict().items()}
    _train_steps(wrapped, _batch(tiny_images))
    after = wrapped.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    plugin_keys = {k for k in after if any(k.startswith(f"{n}.") and "base_layer" not in k[len(n):]
                                           for n, _ in adapters(wrapped.net))}
    assert changed, "training changed nothing"
    assert changed <= plugin_keys, f"base tensors changed: {sorted(changed - plugin_keys)[:5]}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("plugin", INJECTORS)
def test_delta_checkpoint_round_trips_exactly(plugin, arch, tmp_path, tiny_images):
    wrapped = _tiny_wrapped(arch, plugin, tmp_path)
    trainable_setup(wrapped, "plugins")
    _train_steps(wrapped, _batch(tiny_images))
    wrapped.net.update(force=True)
    saved = save_model(wrapped, tmp_path / "model")
    loaded = load_model(saved)
    original, restored = wrapped.net.state_dict(), loaded.net.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert loaded.fingerprint() == wrapped.fingerprint()
    full_bytes = sum(t.numel() * t.element_size() for t in original.values())
    assert (saved / "model.safetensors").stat().st_size < full_bytes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("plugin", INJECTORS)
def test_entropy_coding_matches_forward(plugin, arch, tmp_path, tiny_images):
    wrapped = _tiny_wrapped(arch, plugin, tmp_path)
    trainable_setup(wrapped, "plugins")
    _train_steps(wrapped, _batch(tiny_images))
    net = wrapped.net.eval()
    net.update(force=True)
    x, _ = pad(tiny_images[0][None])
    with torch.no_grad(), use_rate(net, wrapped.middle_lambda()):
        expected = net(x)["x_hat"].clamp(0, 1)
        coded = net.compress(x)
        decoded = net.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert sum(len(s[0]) for s in coded["strings"]) > 0
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)
