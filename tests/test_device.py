"""Device selection lives in vrtk.device, read by training and coding alike; a device that is not there is a clear
error."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from vrtk.device import pick_device
from vrtk.errors import VrtkError


def test_auto_and_cpu():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_training_and_the_command_layer_use_the_same_function():
    import vrtk.commands.common as common
    import vrtk.train.runner as runner

    assert runner.pick_device is pick_device
    imported = common.load_from_args.__code__.co_names
    assert "vrtk.device" in imported and not any(n.startswith("vrtk.train") for n in imported)


def test_a_bad_device_name_is_a_clear_error():
    with pytest.raises(VrtkError, match="not a torch device"):
        pick_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, tiny_images):
    from PIL import Image

    Image.fromarray(tiny_images[0].mul(255).byte().permute(1, 2, 0).numpy()).save(tmp_path / "x.png")
    with pytest.raises(VrtkError, match="no CUDA device"):
        pick_device("cuda:0")
    code, _, err = run_cli("compress", str(tmp_path / "x.png"), "-o", str(tmp_path / "x.vrtk"), "--device", "cuda")
    assert code == 2 and "no CUDA device" in err
