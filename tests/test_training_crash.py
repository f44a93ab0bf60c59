"""Training killed with SIGKILL at random moments always leaves a loadable checkpoint, and --resume finishes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from vrtk.errors import RecipeError
from vrtk.train.recipe import resolve
from vrtk.train.runner import run_recipe


def _start(out, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vrtk", "run", "pretrain", "profile=test", "steps=400", "ckpt_every=1",
           "log_every=1", f"out={out}", "--no-progress"] + (["--resume"] if resume else [])
    env = {**os.environ, "VRTK_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path):
    rng = random.Random(7)
    out = tmp_path / "run"
    last_step = -1
    for attempt in range(3):
        proc = _start(out, resume=attempt > 0)
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(out / "last.pt", weights_only=True)  # must always load
        assert state["step"] >= last_step
        last_step = state["step"]
    proc = _start(out, resume=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 400


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    config = resolve("pretrain", ["profile=test", "steps=6", f"out={tmp_path}"])
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint fails half-way, like a full disk
            with open(f, "wb") as fh:
                fh.write(b"half")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space"):
        run_recipe(config, progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_recipe_cannot_import_arbitrary_code_without_a_flag(tmp_path):
    config = resolve("pretrain", ["profile=test", "model=os.path:join", f"out={tmp_path / 'x'}"])
    with pytest.raises(RecipeError, match="--allow-code"):
        run_recipe(config, progress=False)
