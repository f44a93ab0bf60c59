"""The Python API behind ``vrtk compress`` / ``vrtk decompress``: images in, .vrtk bytes out, and back.

    >>> import vrtk
    >>> data = vrtk.compress("photo.png", "runs/bm/model", lmbda=0.01)     # or quality=3.5, or target_bpp=0.4
    >>> image = vrtk.decompress(data, "runs/bm/model")                   # a PIL image, RGB or L as the input
    >>> data = vrtk.compress("photo.png", lmbda=0.01, refine=20)   # 20 refinement steps: slower encode, fewer bits

``model`` is anything :func:`vrtk.model.resolve_model` accepts (a model folder, ``default``, an architecture
name) or a :class:`vrtk.model.WrappedModel`; pass a loaded model (:func:`load`) when coding many images.

The rate is one of ``lmbda`` (a Lagrange multiplier in the trained range), ``quality`` (continuous 1..n over the
n trained lambdas, log-linear in between) or ``target_bpp`` (searched per image). A variable-rate model given no
rate uses the middle of its range; a fixed-rate model takes none. bpp here always counts the whole .vrtk file
(header included) over the original pixels; ``payload_bpp`` counts only the entropy-coded strings, as
CompressAI's papers do.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vrtk import coding_limits, container, limits
from vrtk.errors import BitstreamError, ImageError, RateError
from vrtk.images import LoadedImage, load_image, to_pil
from vrtk.rate import check_lambda, quality_to_lambda, use_rate

DEFAULT_TOLERANCE = 0.01  # target-bpp search: relative distance from the target that counts as reached


# -- models ---------------------------------------------------------------------------------------------------
def load(model="default", device: str | None = None, allow_code: bool = False):
    """A WrappedModel ready to code: entropy tables built, eval mode. A model folder naming a class of its own
    (``package.module:Class``) is refused unless ``allow_code`` (importing it runs that package's code)."""
    from vrtk.model import WrappedModel, resolve_model

    wrapped = model if isinstance(model, WrappedModel) else resolve_model(str(model), allow_code=allow_code)
    if device:
        wrapped.to(device)
    wrapped.net.eval()
    wrapped.net.update()  # no-op when the tables exist; a fresh wrap has none
    return wrapped


def needs_rate(wrapped, registry=None) -> bool:
    """True when a plugin of this model changes the network with the rate (its modules must be given one)."""
    from vrtk.plugin_manager import get_registry

    registry = registry or get_registry()
    return any(registry.injector(p.name).rate_dependent for p in wrapped.plugins)


def describe_range(wrapped) -> str:
    lams = sorted(wrapped.lambdas)
    if not lams:
        return "no trained rate"
    if len(lams) == 1:
        return f"fixed rate (lambda {lams[0]:g})"
    return f"lambda {lams[0]:g}..{lams[-1]:g}, quality 1..{len(lams)}"


def resolve_rate(wrapped, lmbda: float | None = None, quality: float | None = None,
                 registry=None) -> tuple[float | None, str | None]:
    """(lambda to code at, or None for a model without rate-dependent modules; a note when one was chosen)."""
    if lmbda is not None and quality is not None:
        raise RateError("give one rate: lmbda or quality (or target_bpp)")
    rate_dependent = needs_rate(wrapped, registry)
    lams = sorted(wrapped.lambdas)
    if not wrapped.variable_rate:
        if lmbda is not None or quality is not None:
            if lams and ((lmbda is not None and math.isclose(lmbda, lams[0], rel_tol=1e-6)) or quality == 1):
                return (lams[0] if rate_dependent else None), None
            raise RateError(f"this model is {describe_range(wrapped)}: it takes no rate option")
        if rate_dependent and not lams:
            raise RateError("this model has rate-dependent plugins but no trained rate range in its config")
        return (lams[0] if rate_dependent else None), None
    if quality is not None:
        return quality_to_lambda(float(quality), lams), None
    if lmbda is not None:
        try:
            return check_lambda(float(lmbda), lams), None
        except (TypeError, ValueError):
            raise RateError(f"lambda must be a number, got {lmbda!r}") from None
    middle = wrapped.middle_lambda()
    return middle, f"no rate given: using lambda {middle:.4g}, the middle of {describe_range(wrapped)}"


# -- images ---------------------------------------------------------------------------------------------------
def as_image(image) -> LoadedImage:
    """A path, a PIL image, a LoadedImage or a float tensor ((3|1, H, W) or (1, 3|1, H, W) in [0, 1])."""
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from vrtk.images import _frames_note, _to_array, source_bits

        notes: list[str] = [note for note in (_frames_note(image),) if note]
        array, mode = _to_array(image, notes, *source_bits(image))
        return LoadedImage(torch.from_numpy(array).permute(2, 0, 1).contiguous(), mode, notes)
    raise ImageError(f"cannot code a {type(image).__name__}: give a path, a PIL image or a tensor")


def _from_tensor(t: torch.Tensor) -> LoadedImage:
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ImageError(f"one image at a time: got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ImageError(f"expected a (3, H, W) or (1, H, W) tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float() / 255.0
    t = t.detach().float().cpu()
    if not torch.isfinite(t).all():
        raise ImageError("the image tensor holds NaN or infinite values")
    mode = "L" if t.shape[0] == 1 else "RGB"
    return LoadedImage(t.clamp(0, 1).expand(3, -1, -1).contiguous(), mode, [])


def _check_size(width: int, height: int) -> None:
    if width * height > container.MAX_PIXELS:
        raise ImageError(f"{width}x{height} is larger than the {container.MAX_PIXELS // 10**6} MP limit")


# -- coding ---------------------------------------------------------------------------------------------------
@dataclass
class RateSearch:
    """What ``target_bpp`` found: the lambda used, the real bpp it gave, and whether it is within tolerance."""

    target_bpp: float
    lmbda: float
    bpp: float
    reached: bool
    message: str
    estimates: int = 0  # forward passes (likelihood estimates)
    encodes: int = 0  # real entropy-coded bitstreams

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CompressResult:
    data: bytes
    lmbda: float | None
    width: int
    height: int
    mode: str
    notes: list[str] = field(default_factory=list)
    search: RateSearch | None = None

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.width * self.height)

    @property
    def payload_bpp(self) -> float:
        return container.parse(self.data).payload_bytes * 8 / (self.width * self.height)


class Coder:
    """One model prepared for coding: rate rules, fingerprint and options computed once for many images."""

    def __init__(self, model="default", options: dict | None = None, registry=None, device: str | None = None,
                 allow_code: bool = False, memory_budget: int | str | None = None, backend: str = "torch",
                 graphs=None, refine=None):
        """``memory_budget``: bytes (or ``"8G"``) one encode or decode may use; default ``VRTK_MEMORY_BUDGET``.
        ``backend``: ``torch`` or ``onnxruntime`` (the graphs of ``graphs``, a folder made by ``vrtk export``,
        by default ``model`` itself); both write files the other decodes (vrtk.export.view).
        ``refine``: steps or a :class:`vrtk.refine.RefineSettings`: the encoder refines each image's latents
        (slower encode, same decoder and file format)."""
        from vrtk.options import apply_options
        from vrtk.plugin_manager import get_registry

        self.registry = registry or get_registry()
        self.memory_budget = limits.memory_budget(memory_budget)  # checked now: a bad value fails before any work
        self.wrapped = load(model, device, allow_code=allow_code)
        self.net = self.wrapped.net
        self.fingerprint = self.wrapped.fingerprint()  # before any option, as the decoder computes it
        self.rate_dependent = needs_rate(self.wrapped, self.registry)
        self.options = dict(options or {})
        apply_options(self.net, self.options, self.registry)
        from vrtk.export.view import codec_view  # the transforms of `backend`, CompressAI's coding, guarded indexes

        self.codec = codec_view(self.wrapped, backend, model if graphs is None else graphs, self.options)
        self.options = dict(self.codec.options)
        from vrtk.refine import RefiningCodec, as_settings

        refine = as_settings(refine)
        self.refiner = RefiningCodec(self.wrapped, self.codec, refine) if refine is not None else None

    @property
    def device(self) -> torch.device:
        return next(iter(self.net.parameters())).device

    # - encoder
    @torch.no_grad()
    def encode(self, image: LoadedImage, lmbda: float | None) -> bytes:
        from vrtk.codec import pad

        width, height = image.size
        _check_size(width, height)
        self.check_memory(width, height, "refining and encoding" if self.refiner else "encoding", lmbda,
                          refining=self.refiner is not None)
        with limits.allocation_failures(f"encoding a {width}x{height} image"):
            x = image.tensor[None].to(self.device)
            xp, unpadding = pad(x)
            with use_rate(self.net, lmbda, self.registry):
                out = self.refiner.compress(xp, unpadding, lmbda) if self.refiner else self.codec.compress(xp)
        strings = [[bytes(s) for s in group] for group in out["strings"]]
        shape = tuple(int(d) for d in out["shape"])
        return container.Container(fingerprint=self.fingerprint, lmbda=lmbda, width=width, height=height,
                                   mode=image.mode, shape=shape, strings=strings,
                                   options=self.options, guard=out["guard"][0]).to_bytes()

    @torch.no_grad()
    def estimate_bits(self, image: LoadedImage, lmbda: float) -> float:
        """Bits of the entropy-coded strings as the model's likelihoods predict them (one forward pass)."""
        from vrtk.codec import pad

        self.check_memory(*image.size, "encoding", lmbda)
        with limits.allocation_failures(f"encoding a {image.size[0]}x{image.size[1]} image"):
            xp, _ = pad(image.tensor[None].to(self.device))
            with use_rate(self.net, lmbda, self.registry):
                out = self.codec(xp)
        return float(sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values()))

    def compress(self, image, lmbda: float | None = None, quality: float | None = None,
                 target_bpp: float | None = None, tolerance: float = DEFAULT_TOLERANCE) -> CompressResult:
        image = as_image(image)
        width, height = image.size
        _check_size(width, height)
        notes = list(image.notes)
        if target_bpp is not None:
            if lmbda is not None or quality is not None:
                raise RateError("give one rate: lmbda, quality or target_bpp")
            search = self.search(image, target_bpp, tolerance)
            data = search.data
            notes.append(search.result.message)
            return CompressResult(data, search.result.lmbda, width, height, image.mode, notes, search.result)
        rate, note = resolve_rate(self.wrapped, lmbda, quality, self.registry)
        if note:
            notes.append(note)
        return CompressResult(self.encode(image, rate), rate, width, height, image.mode, notes)

    def search(self, image: LoadedImage, target_bpp: float, tolerance: float = DEFAULT_TOLERANCE) -> _Search:
        return _Search(self, image, target_bpp, tolerance).run()

    def check_memory(self, width: int, height: int, what: str, lmbda: float | None, groups: int = 0,
                     refining: bool = False) -> None:
        """Refuse, before allocating, an image whose coding would need more memory than the budget."""
        rate = lmbda if lmbda is not None else self.wrapped.middle_lambda()
        coding_limits.check_memory(self.net, width, height, what, rate, self.registry, self.memory_budget, groups,
                                   refining)

    # - decoder
    def check(self, header: container.Container) -> None:
        """Refuse a file this model cannot decode, before decoding anything."""
        from vrtk.codec import PAD_MULTIPLE

        if header.fingerprint != self.fingerprint:
            raise BitstreamError(f"this file was made with another model (fingerprint {header.fingerprint[:12]}), "
                                 f"not the one given (fingerprint {self.fingerprint[:12]}); decompress it with the "
                                 "model that compressed it")
        if self.rate_dependent:
            if header.lmbda is None:
                raise BitstreamError("the file carries no rate, but this model needs one")
            try:
                check_lambda(header.lmbda, self.wrapped.lambdas)
            except RateError as exc:
                raise BitstreamError(f"the file's rate does not fit this model: {exc}") from None
        if any(len(group) != 1 for group in header.strings):
            raise BitstreamError(f"damaged .vrtk file: {[len(g) for g in header.strings]} strings per group; a file "
                                 "holds one image, so one string per group")
        factor = getattr(self.net, "downsampling_factor", None)
        if isinstance(factor, int) and len(header.shape) == 2:
            expected = tuple(-(-d // PAD_MULTIPLE) * PAD_MULTIPLE // factor for d in (header.height, header.width))
            if header.shape != expected:
                raise BitstreamError(f"damaged .vrtk file: latent shape {header.shape} does not fit a "
                                     f"{header.width}x{header.height} image (expected {expected})")
        coding_limits.check_string_capacity(self.net, header.shape, header.strings, header.width, header.height)

    @torch.no_grad()
    def decode(self, data: bytes) -> Decoded:
        from compressai.ops import compute_padding

        from vrtk.codec import PAD_MULTIPLE, unpad
        from vrtk.options import apply_options

        header = container.parse(data)
        self.check(header)
        self.codec.check_options(header.options)  # graphs of an export run with the options they were made with
        if header.options != self.options:
            if set(self.options) - set(header.options):
                raise BitstreamError(f"this loaded model has the options {self.options} applied and the file "
                                     f"needs {header.options or 'none'}: decode it with a freshly loaded model")
            try:
                apply_options(self.net, header.options, self.registry)
            except (TypeError, ValueError, OverflowError) as exc:
                raise BitstreamError(f"damaged .vrtk file: its options {header.options} do not fit this model "
                                     f"({exc})") from None
            self.options = dict(header.options)
        self.check_memory(header.width, header.height, "decoding", header.lmbda, groups=len(header.strings))
        try:
            with limits.allocation_failures(f"decoding a {header.width}x{header.height} image"), \
                    use_rate(self.net, header.lmbda, self.registry):
                out = self.codec.decompress(_guard_strings(self.net, header), header.shape, guard=header.guard)
        except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
            raise BitstreamError(f"the entropy-coded data does not decode with this model ({exc})") from None
        x_hat = out["x_hat"]
        _, unpadding = compute_padding(header.height, header.width, min_div=PAD_MULTIPLE)
        padded = tuple(-(-d // PAD_MULTIPLE) * PAD_MULTIPLE for d in (header.height, header.width))
        if tuple(x_hat.shape[-2:]) != padded:
            raise BitstreamError(f"decoded size {tuple(x_hat.shape[-2:])} does not match the header's image size "
                                 f"{header.width}x{header.height}")
        x_hat = unpad(x_hat, unpadding).nan_to_num(0.0).clamp(0, 1)[0].cpu()  # garbage latents can overflow to NaN
        if header.mode == "L":
            x_hat = x_hat.mean(0, keepdim=True).expand(3, -1, -1)
        return Decoded(x_hat, header.mode, header)


def _guard_strings(net, header: container.Container) -> list[list[bytes]]:
    """The strings with zero bytes appended, so CompressAI's rANS decoder stays inside its buffer on damaged data.

    The C++ decoder trusts the stream: it reads a 32-bit word whenever its state runs low, with no end check, so a
    short or garbled string makes it read past the end of the buffer (a segfault on a large image). It reads at
    most about one word per decoded symbol, so 8 bytes per symbol of the largest latent (M channels at 1/16 of the
    padded size) keeps every read inside. A valid stream never reads its padding, so decoding is unchanged.
    Called only after :meth:`Coder.check_memory` counted these bytes in the budget: a hostile header cannot make
    it build a giant bytes object."""
    zeros = bytes(coding_limits.guard_bytes(net, header.width, header.height))
    return [[bytes(s) + zeros for s in group] for group in header.strings]


@dataclass
class Decoded:
    """A decoded image: ``tensor`` (3, H, W) in [0, 1] (grayscale repeated), the mode to write, the header."""

    tensor: torch.Tensor
    mode: str
    header: container.Container

    def to_pil(self):
        return to_pil(self.tensor, self.mode)


class _Search:
    """Target bpp: bisection on log(lambda) with likelihood estimates, then real bitstreams to confirm/refine."""

    MAX_ESTIMATES = 20
    MAX_ENCODES = 14

    def __init__(self, coder: Coder, image: LoadedImage, target: float, tolerance: float):
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise RateError(f"target bpp must be a positive number, got {target!r}")
        if not coder.wrapped.variable_rate:
            raise RateError(f"this model is {describe_range(coder.wrapped)}: it cannot aim at a bpp")
        self.coder, self.image, self.target, self.tol = coder, image, float(target), tolerance
        self.pixels = image.size[0] * image.size[1]
        self.real: dict[float, tuple[float, bytes]] = {}  # lambda -> (file bpp, file bytes)
        self.estimates = 0
        self.data = b""
        self.result: RateSearch | None = None

    def real_bpp(self, lmbda: float) -> float:
        if lmbda not in self.real:
            data = self.coder.encode(self.image, lmbda)
            self.real[lmbda] = (len(data) * 8 / self.pixels, data)
        return self.real[lmbda][0]

    def close(self, bpp: float) -> bool:
        return abs(bpp - self.target) <= self.tol * self.target

    def run(self) -> _Search:
        lams = sorted(self.coder.wrapped.lambdas)
        lo, hi = lams[0], lams[-1]
        r_lo, r_hi = self.real_bpp(lo), self.real_bpp(hi)
        if not r_lo < self.target < r_hi:
            if self.close(r_lo) or self.close(r_hi):
                return self.finish("reached at an end of the trained range")
            where = "below the lowest" if self.target <= r_lo else "above the highest"
            if r_lo >= r_hi:
                where = "outside the"
            return self.finish(f"{self.target:g} bpp is {where} rate this model reaches on this image "
                               f"({r_lo:.4g} bpp at lambda {lo:g}, {r_hi:.4g} bpp at lambda {hi:g})")
        # 1. bisection on log lambda with the likelihood estimate plus the container's fixed overhead
        overhead = (len(self.real[lo][1]) - container.parse(self.real[lo][1]).payload_bytes) * 8
        a, b = math.log(lo), math.log(hi)
        guess = (a + b) / 2
        while self.estimates < self.MAX_ESTIMATES and b - a > 1e-3:  # 0.1% in lambda: finer is noise
            guess = (a + b) / 2
            est = (self.coder.estimate_bits(self.image, math.exp(guess)) + overhead) / self.pixels
            self.estimates += 1
            if abs(est - self.target) <= self.tol * self.target / 4:
                break
            a, b = (guess, b) if est < self.target else (a, guess)
        if self.close(self.real_bpp(math.exp(guess))):
            return self.finish("reached")
        # 2. refine on real bitstreams: Illinois regula falsi between the nearest real rates around the target
        fa_lm, fa = max(((lm, r - self.target) for lm, (r, _) in self.real.items() if r < self.target),
                        key=lambda t: t[1])
        fb_lm, fb = min(((lm, r - self.target) for lm, (r, _) in self.real.items() if r > self.target),
                        key=lambda t: t[1])
        a, b, last = math.log(fa_lm), math.log(fb_lm), 0
        while len(self.real) < self.MAX_ENCODES and abs(b - a) > 1e-9:
            c = a - fa * (b - a) / (fb - fa)
            c = min(max(c, a + 0.02 * (b - a)), b - 0.02 * (b - a))  # never stall at an end of the bracket
            fc = self.real_bpp(math.exp(c)) - self.target
            if self.close(fc + self.target):
                return self.finish("reached")
            if fc < 0:
                a, fa = c, fc
                fb = fb / 2 if last == -1 else fb
                last = -1
            else:
                b, fb = c, fc
                fa = fa / 2 if last == 1 else fa
                last = 1
        below = max(len(d) for r, d in self.real.values() if r < self.target)
        above = min(len(d) for r, d in self.real.values() if r > self.target)
        return self.finish(f"not within {self.tol:.0%}: the file jumps from {below} to {above} bytes between lambda "
                           f"{math.exp(a):.5g} and {math.exp(b):.5g} (CompressAI's rANS coder writes 4-byte words, "
                           f"so on a {self.image.size[0]}x{self.image.size[1]} image the rate moves in steps of at "
                           f"least {32 / self.pixels:.2g} bpp)")

    def finish(self, why: str) -> _Search:
        lmbda = min(self.real, key=lambda lm: abs(self.real[lm][0] - self.target))
        bpp, self.data = self.real[lmbda]
        head = f"target {self.target:g} bpp: got {bpp:.4g} bpp ({bpp / self.target - 1:+.2%}) at lambda {lmbda:.5g}"
        self.result = RateSearch(self.target, lmbda, bpp, self.close(bpp), f"{head}; {why}", self.estimates,
                                 len(self.real))
        return self


# -- the short forms --------------------------------------------------------------------------------------------
def compress(image, model="default", lmbda: float | None = None, quality: float | None = None,
             target_bpp: float | None = None, options: dict | None = None,
             allow_code: bool = False, refine=None) -> bytes:
    """Image (path, PIL image or tensor) -> the bytes of a .vrtk file. Conversion notes become warnings.
    ``refine``: refinement steps (or a :class:`vrtk.refine.RefineSettings`) per image before coding."""
    coder = Coder(model, options, allow_code=allow_code, refine=refine)
    result = coder.compress(image, lmbda=lmbda, quality=quality, target_bpp=target_bpp)
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result.data


def decompress(data: bytes | str | os.PathLike, model="default", allow_code: bool = False):
    """.vrtk bytes (or a path to a .vrtk file) -> a PIL image in the original mode (RGB or L) and size."""
    if isinstance(data, (str, os.PathLike)):
        data = read_file(data)
    return Coder(model, allow_code=allow_code).decode(data).to_pil()


def decompress_tensor(data: bytes, model="default", allow_code: bool = False) -> Decoded:
    return Coder(model, allow_code=allow_code).decode(data)


def read_file(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise BitstreamError(f"{path}: no such file")
    size = path.stat().st_size
    limit = container.MAX_PIXELS * 4  # far more than any file a 64 MP image can code to
    if size > limit:
        raise BitstreamError(f"{path}: {size} bytes is larger than any .vrtk file can be")
    return path.read_bytes()


def read_header(data: bytes) -> container.Container:
    return container.parse(data)
