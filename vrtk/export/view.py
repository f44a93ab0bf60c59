"""The codec every backend shares: CompressAI's own compress/decompress/forward with the transforms swapped.

``CodecView(net)`` runs ``type(net).compress(view, x)`` -- the architecture's unchanged method -- with ``view``
standing in for ``net``: ``view.g_a`` .. ``view.g_s`` are the torch modules (g_a and g_s fed channels-last
tensors, :data:`CHANNELS_LAST`) or onnxruntime sessions, the entropy bottleneck is the model's own, and the
Gaussian conditional is the model's own with its index lookup guarded (:mod:`vrtk.export.guard`). Nothing of the
codec is rewritten, so the torch and onnxruntime backends write the same kind of file and read each other's.

The view is an ``nn.Module`` holding the model as ``net``: :func:`vrtk.rate.use_rate` and the plugins' option hooks
reach the model's modules through it, and a backend reads the rate from the model's rate modules.
"""

from __future__ import annotations

import torch
from compressai.models.google import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from torch import nn

from vrtk.errors import BitstreamError, VrtkError
from vrtk.export.guard import MARGIN, apply_guard, boundaries, make_guard

BACKENDS = ("torch", "onnxruntime")
# coding procedure -> (the CompressAI class whose methods code it, the transforms those methods call)
CODINGS = {
    "factorized": (FactorizedPrior, ("g_a", "g_s")),
    "scale-hyperprior": (ScaleHyperprior, ("g_a", "h_a", "h_s", "g_s")),
    "mean-scale-hyperprior": (MeanScaleHyperprior, ("g_a", "h_a", "h_s", "g_s")),
}
_METHODS = ("compress", "decompress", "forward")
# The torch backend runs g_a and g_s on channels-last input: oneDNN's CPU convolutions are faster in it (decode about
# 0.7x, encode 0.8x the time: benchmarks/layout_speed.py) and the reconstruction is the same. h_a and h_s stay NCHW:
# the scales the decoder looks up must match the encoder's bit for bit, also for files made before.
CHANNELS_LAST = ("g_a", "g_s")


def coding_of(net: nn.Module) -> str | None:
    """Which known procedure codes ``net``: its class must use that CompressAI class's methods unchanged."""
    for name, (base, _) in CODINGS.items():
        if isinstance(net, base) and all(getattr(type(net), m) is getattr(base, m) for m in _METHODS):
            return name
    return None


class GuardedConditional:
    """The model's Gaussian conditional; ``build_indexes`` records (encoder) or applies (decoder) the guard."""

    def __init__(self, conditional, margin: float = MARGIN):
        self._conditional = conditional
        self.margin = margin
        self.made: list[bytes] = []  # guards of the last encode, one per image
        self.given: list[bytes] | None = None  # guards to apply while decoding

    def __getattr__(self, name):
        return getattr(self._conditional, name)

    def __call__(self, *args, **kwargs):
        return self._conditional(*args, **kwargs)

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        edges = boundaries(self._conditional)
        if self.given is None:
            self.made = [make_guard(scales[i], edges, self.margin) for i in range(scales.shape[0])]
            return self._conditional.build_indexes(scales)
        if len(self.given) != scales.shape[0]:
            raise BitstreamError(f"{len(self.given)} index guards for {scales.shape[0]} images")
        guarded = torch.stack([apply_guard(scales[i], g, edges) for i, g in enumerate(self.given)])
        return self._conditional.build_indexes(guarded)


class ChannelsLast:
    """A transform run on channels-last input, its output handed back in the default layout."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return self.module(x)
        return self.module(x.contiguous(memory_format=torch.channels_last)).contiguous()


class CodecView(nn.Module):
    """``net``'s coding with ``transforms`` ({name: callable}, None = the torch modules) and a guarded lookup.

    A model whose coding procedure is not one of :data:`CODINGS` (e.g. mbt2018's autoregressive context) is
    passed through unchanged (torch only, no guard). ``channels_last``: run the torch modules of
    :data:`CHANNELS_LAST` on channels-last input (False: the modules as they are, for comparisons).
    """

    def __init__(self, net: nn.Module, transforms: dict | None = None, options: dict | None = None,
                 margin: float = MARGIN, backend: str = "torch", channels_last: bool = True):
        super().__init__()
        self.net = net
        self.channels_last = channels_last
        self.coding = coding_of(net)
        self.backend = backend
        self.options = dict(options or {})
        self._transforms = dict(transforms) if transforms is not None else None
        if self._transforms is not None and self.coding is None:
            raise VrtkError(f"{type(net).__name__} cannot run on {backend}: only {', '.join(CODINGS)} codecs can")
        conditional = getattr(net, "gaussian_conditional", None)
        self._conditional = GuardedConditional(conditional, margin) if conditional is not None else None

    # what CompressAI's methods read from `self`
    def _transform(self, name: str):
        if self._transforms is not None:
            return self._transforms[name]
        module = getattr(self.net, name)
        return ChannelsLast(module) if self.channels_last and name in CHANNELS_LAST else module

    g_a = property(lambda self: self._transform("g_a"))
    h_a = property(lambda self: self._transform("h_a"))
    h_s = property(lambda self: self._transform("h_s"))
    g_s = property(lambda self: self._transform("g_s"))
    entropy_bottleneck = property(lambda self: self.net.entropy_bottleneck)
    gaussian_conditional = property(lambda self: self._conditional)
    downsampling_factor = property(lambda self: getattr(self.net, "downsampling_factor", None))
    M = property(lambda self: getattr(self.net, "M", None))
    N = property(lambda self: getattr(self.net, "N", None))

    @property
    def _method_owner(self):
        return CODINGS[self.coding][0]

    @property
    def transform_names(self) -> tuple[str, ...]:
        """The transforms the coding calls (none known for a passed-through model)."""
        return CODINGS[self.coding][1] if self.coding is not None else ()

    def with_transforms(self, **overrides) -> CodecView:
        """A view of the same model and coding with some transforms replaced by callables (the others kept)."""
        unknown = sorted(set(overrides) - set(self.transform_names))
        if unknown:
            raise VrtkError(f"{type(self.net).__name__} codes without the transform(s) {unknown}")
        transforms = {name: overrides.get(name, self._transform(name)) for name in self.transform_names}
        margin = self._conditional.margin if self._conditional is not None else MARGIN
        return CodecView(self.net, transforms, options=self.options, margin=margin, backend=self.backend)

    def compress(self, x: torch.Tensor) -> dict:
        """CompressAI's ``{"strings", "shape"}`` plus ``"guard"``: one index guard (bytes) per image."""
        if self.coding is None:
            return {**self.net.compress(x), "guard": [b""] * x.shape[0]}
        if self._conditional is None:
            return {**self._method_owner.compress(self, x), "guard": [b""] * x.shape[0]}
        self._conditional.given = None
        out = self._method_owner.compress(self, x)
        return {**out, "guard": list(self._conditional.made)}

    def decompress(self, strings, shape, guard: bytes | list[bytes] | None = None) -> dict:
        """CompressAI's ``decompress``; ``guard`` is one image's guard bytes or a list of them (None: none)."""
        images = len(strings[0])
        guards = [guard] if isinstance(guard, (bytes, bytearray)) else list(guard or [b""] * images)
        if self.coding is None or self._conditional is None:
            if any(guards):
                raise BitstreamError("the file carries an index guard, but this model looks up no scale indexes")
            return self.net.decompress(strings, shape) if self.coding is None \
                else self._method_owner.decompress(self, strings, shape)
        self._conditional.given = [bytes(g) for g in guards]
        try:
            return self._method_owner.decompress(self, strings, shape)
        finally:
            self._conditional.given = None

    def check_options(self, options: dict) -> None:
        """Graphs were exported with their options built in: a file asking for others cannot be decoded by them."""
        if self.backend != "torch" and dict(options) != self.options:
            raise BitstreamError(f"this file needs the options {options or 'none'}; the {self.backend} graphs were "
                                 f"exported with {self.options or 'none'}: decode it with the torch backend or "
                                 "an export made with those --option values")

    def forward(self, x: torch.Tensor) -> dict:
        if self.coding is None:
            return self.net(x)
        return self._method_owner.forward(self, x)


def codec_view(wrapped, backend: str = "torch", source=None, options: dict | None = None,
               threads: int | None = None, channels_last: bool = True) -> CodecView:
    """The view a :class:`vrtk.api.Coder` codes with. ``onnxruntime`` needs ``source``: a folder made by
    ``vrtk export`` (``wrapped`` is the model saved in it); ``options`` must be those the graphs were made with."""
    if backend == "torch":
        return CodecView(wrapped.net, options=options, channels_last=channels_last)
    if backend == "onnxruntime":
        from vrtk.export.runtime import onnx_transforms

        transforms, manifest = onnx_transforms(source, wrapped, threads)
        baked = manifest.get("options", {})
        if options and options != baked:
            raise VrtkError(f"the graphs in {source} were exported with the options {baked or 'none'}, not "
                            f"{options}; export again with those --option values")
        return CodecView(wrapped.net, transforms, options=baked, backend=backend)
    raise VrtkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
