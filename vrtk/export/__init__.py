"""Deployment: the transforms as ONNX graphs, an onnxruntime backend, and a codec that decodes across backends.

    vrtk export MODEL -o DIR --format onnx      -> DIR: the model folder + g_a/h_a/h_s/g_s.onnx + export.json
                                                   + model_card.md/.json (folder.py, graphs.py, rate.py, card.py)
    vrtk compress/decompress/eval --backend onnxruntime --model DIR
                                                -> the graphs run the transforms (runtime.py); CompressAI's
                                                   entropy models and rANS coder stay in vrtk (view.py)

Every backend codes through :class:`vrtk.export.view.CodecView`: the architecture's own CompressAI
``compress``/``decompress`` with the transforms swapped and the scale-index lookup guarded (guard.py), so a file
made by one backend decodes with the other.
"""

from vrtk.errors import VrtkError


class ExportError(VrtkError):
    """A model that cannot be exported or run on a backend (the module or setting at fault is named)."""
