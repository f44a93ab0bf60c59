"""Which torch device to run on: one small module that training (``vrtk run``) and coding (``vrtk compress``,
``vrtk eval``, the Python API) both read, so the command layer does not reach into the training runner for it."""

from __future__ import annotations

import torch

from vrtk.errors import VrtkError

DEVICE_HELP = "auto | cpu | cuda | cuda:1 ..."


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; otherwise the named device.

    A device that does not exist here is refused with the reason now, instead of a CUDA error at the first tensor
    moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise VrtkError(f"device {name!r} is not a torch device ({DEVICE_HELP})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VrtkError(f"device {name!r}: no CUDA device is available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VrtkError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
