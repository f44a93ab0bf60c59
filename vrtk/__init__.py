"""vrtk: variable-rate and efficiency plugins for pretrained CompressAI-style image codecs."""

import warnings

__version__ = "0.1.0"

# CompressAI imports torch.jit.script at import time, which warns on every command.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit.*")
