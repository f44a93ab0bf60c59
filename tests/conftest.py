"""Shared fixtures: tiny models, synthetic images, a fresh plugin registry per test, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VRTK_OFFLINE", "1")  # never try to download in tests

from vrtk.data import synthetic_images  # noqa: E402
from vrtk.plugin_manager import set_registry  # noqa: E402
from vrtk.zoo import BaseSpec  # noqa: E402

TINY_KWARGS = {"N": 8, "M": 12}

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine threads cost up to 10x.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test discovers plugins anew (entry points), and leaves no registered architecture behind."""
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture
def tiny_spec() -> BaseSpec:
    torch.manual_seed(0)
    return BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS))


@pytest.fixture
def tiny_images() -> list[torch.Tensor]:
    """Three small float images (3, H, W) in [0, 1], sizes not multiples of 64."""
    return [img.float() / 255 for img in synthetic_images(3, height=70, width=90, seed=1)]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process and capture its output."""
    import contextlib
    import io

    from vrtk.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
