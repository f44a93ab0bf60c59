"""A file compressed in one process decodes bit-exactly in another: two `python -m vrtk` subprocesses and an
in-process decode of the same files agree pixel for pixel, and two compressing processes write identical bytes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from conftest import TINY_KWARGS
from PIL import Image

from vrtk.api import Coder, read_file
from vrtk.data import synthetic_images
from vrtk.model import load_model, save_model, wrap
from vrtk.zoo import BaseSpec


def vrtk_cli(*argv: str) -> None:
    env = dict(os.environ, VRTK_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "vrtk", *argv], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_compress_and_decompress_in_separate_processes_are_bit_exact(tmp_path):
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    with torch.no_grad():
        wrapped.net.g_a[-1].weight.mul_(40.0)  # latents large enough to need real entropy coding
    wrapped.net.update(force=True)
    model_dir = save_model(wrapped, tmp_path / "model")
    sizes = [(70, 90), (33, 47), (64, 64)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        array = synthetic_images(1, height=h, width=w, seed=10 + i)[0].permute(1, 2, 0).numpy().astype(np.uint8)
        image = Image.fromarray(array)
        paths.append(tmp_path / f"img{i}.png")
        (image.convert("L") if i == 1 else image).save(paths[-1])

    vrtk_cli("compress", *map(str, paths), "-o", str(tmp_path / "a"), "--model", str(model_dir))
    vrtk_cli("compress", *map(str, paths), "-o", str(tmp_path / "b"), "--model", str(model_dir))
    vrtk_cli("decompress", *(str(tmp_path / "a" / f"img{i}.vrtk") for i in range(3)), "-o", str(tmp_path / "out"),
             "--model", str(model_dir))

    decoder = Coder(load_model(model_dir))
    for i, (h, w) in enumerate(sizes):
        first = (tmp_path / "a" / f"img{i}.vrtk").read_bytes()
        assert first == (tmp_path / "b" / f"img{i}.vrtk").read_bytes(), f"img{i}: two processes wrote different files"
        assert len(first) > 100
        other_process = np.asarray(Image.open(tmp_path / "out" / f"img{i}.png"))
        here = np.asarray(decoder.decode(read_file(tmp_path / "a" / f"img{i}.vrtk")).to_pil())
        assert other_process.shape == here.shape == ((h, w) if i == 1 else (h, w, 3))
        assert np.array_equal(other_process, here), f"img{i}: decoded differently in two processes"
        original = np.asarray(Image.open(paths[i]))
        assert not np.array_equal(original, np.zeros_like(original))
