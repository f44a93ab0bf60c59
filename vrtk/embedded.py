"""The two models embedded in vrtk, both made from one trained variable-rate model by ``vrtk export-default``.

    default       vrtk/assets/default/                 a model folder: the base + its rate plugin (bm), every
                                                       tensor, learned parameters in fp16. What compress, eval
                                                       and demo use when no model is named: any rate in range.
    default-base  vrtk/assets/default-base.safetensors the same network with the modulators folded in at one
                  + default-base.json                  lambda (vrtk/fold.py): a plain CompressAI model, the base
                                                       that recipes and ``vrtk wrap`` start from.

Learned parameters are stored in fp16 and buffers exactly: fp16 would turn CompressAI's likelihood floor (1e-9)
into 0, and a single zero likelihood makes the rate term infinite when the model is fine-tuned.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from vrtk.errors import ModelError
from vrtk.fileio import write_json_atomic, write_with_atomic
from vrtk.fold import folded_model
from vrtk.model import load_model, save_model
from vrtk.zoo import default_base_files, default_model_dir, half_parameters


def export_default(model_dir: str | os.PathLike, base_lambda: float, command: str, notes: dict | None = None,
                   assets: Path | None = None) -> tuple[Path, Path]:
    """Write ``default`` (the variable-rate model) and ``default-base`` (it, folded at ``base_lambda``)."""
    from safetensors.torch import save_file

    wrapped = load_model(model_dir)
    if not wrapped.variable_rate or len(wrapped.plugins) != 1:
        raise ModelError(f"{model_dir}: the embedded default must be a variable-rate model with one rate plugin "
                         "(e.g. made by `vrtk run bm-finetune`)")
    fixed = folded_model(wrapped, base_lambda)
    folded, arch, sizes = fixed.net, fixed.base.arch, fixed.base.arch_kwargs
    wrapped.base = replace(fixed.base)  # the registered architecture: the folder loads without any embedded base
    wrapped.extra = {**wrapped.extra, "made_by": command, **(notes or {})}
    folder = assets / "default" if assets else default_model_dir()
    weights, meta = (assets / "default-base.safetensors", assets / "default-base.json") if assets \
        else default_base_files()
    _replace_folder(folder, lambda tmp: save_model(wrapped, tmp, full=True, half=True))
    state = {k: v.contiguous() for k, v in half_parameters(folded, folded.state_dict()).items()}
    write_with_atomic(weights, lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(meta, {"arch": arch, "arch_kwargs": sizes, "metric": wrapped.metric, "lambda": base_lambda,
                             "dtype": "float16 parameters, buffers as trained",
                             "made_by": f"{command}; modulators folded at lambda {base_lambda:g}",
                             "training": wrapped.extra.get("training", {}), **(notes or {})})
    return folder, weights


def _replace_folder(folder: Path, write) -> None:
    """Write a folder next to ``folder`` and swap it in, so a crash never leaves a half-written model."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a model folder is as readable as any file
    try:
        write(staging)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
