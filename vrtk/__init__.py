"""vrtk: variable-rate and efficiency plugins for pretrained CompressAI-style image codecs."""

import warnings

__version__ = "0.8.0"

# CompressAI imports torch.jit.script at import time, which warns on every command.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit.*")


def __getattr__(name):
    """``vrtk.compress`` / ``vrtk.decompress`` load torch only when first used (``import vrtk`` stays light)."""
    if name in ("compress", "decompress"):
        from vrtk import api

        return getattr(api, name)
    raise AttributeError(f"module 'vrtk' has no attribute {name!r}")
