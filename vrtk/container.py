"""The .vrtk file: one coded image plus everything the decoder must know, checked before anything is allocated.

Byte layout, versions 1 and 2 (all integers big-endian, unsigned)::

    offset  size  field
    0       4     magic b"VRTK"
    4       2     format version (1 or 2)
    6       8     total file length in bytes, checksum included (a truncated file is named as such)
    14      32    model fingerprint: the raw SHA-256 of WrappedModel.fingerprint() (every tensor the decoder uses)
    46      8     lambda, IEEE-754 float64; 0.0 = no rate (a fixed-rate model)
    54      4     original width in pixels
    58      4     original height in pixels
    62      1     mode to write back: 0 = RGB, 1 = L (grayscale)
    63      2     J = length of the options JSON (<= 4096)
    65      J     inference options that change decoding, UTF-8 JSON object (e.g. {"ecg.scale": 0.5}; J = 0: none;
                  nested at most 4 deep, finite numbers only)
    65+J    1     R = rank of the latent shape (1..4)
    ..      4*R   the latent shape CompressAI's compress() returned (for the hyperprior models: z's H, W)
    ..      1     G = number of string groups (1..16): CompressAI's ``strings`` list, e.g. [y_strings, z_strings]
    per group:
            2     S = number of strings in the group (1..256; one per image in the batch)
            per string: 4 bytes length L, then L bytes of entropy-coded data
    version 2 only:
            4     K = length of the index guard, then K bytes (vrtk.export.guard: the latent elements whose
                  entropy-coder table the decoder takes from the file, so backends that differ in the last bits
                  of the hyper-decoder's output decode the same symbols)
    end-4   4     CRC-32 (zlib) of every byte before it

A file is written with the lowest version that holds it: version 1 when it has no index guard.

Reading checks, in order: magic, version (a newer file is refused before its contents are trusted), the length
(truncation), the CRC (damage), then every field against its bounds and the bytes that remain, and the image
size against :data:`MAX_PIXELS` — so a hostile header cannot make the decoder allocate anything large. Whether
the file fits a given model (fingerprint, rate range) is checked by :mod:`vrtk.api`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

from vrtk.errors import BitstreamError
from vrtk.images import MAX_PIXELS

MAGIC = b"VRTK"
VERSION = 2  # the newest this vrtk reads
SUFFIX = ".vrtk"
MODES = ("RGB", "L")
MAX_OPTIONS_BYTES = 4096
MAX_RANK = 4
MAX_GROUPS = 16
MAX_STRINGS = 256
MAX_OPTIONS_DEPTH = 4

_PREFIX = struct.Struct(">4sHQ")  # magic, version, total length
_FIXED = struct.Struct(">32sdIIBH")  # fingerprint, lambda, width, height, mode, options length
_CRC = struct.Struct(">I")
MIN_LENGTH = _PREFIX.size + _FIXED.size + 1 + 1 + _CRC.size


@dataclass
class Container:
    """Everything in a .vrtk file. ``strings`` is CompressAI's list (groups) of lists (batch) of bytes."""

    fingerprint: str  # 64 hex digits
    lmbda: float | None
    width: int
    height: int
    mode: str
    shape: tuple[int, ...]
    strings: list[list[bytes]]
    options: dict = field(default_factory=dict)
    version: int = field(default=1, compare=False)  # as read; writing picks the lowest version that holds the file
    guard: bytes = b""  # the index guard (version 2)

    @property
    def payload_bytes(self) -> int:
        """Bytes of entropy-coded data (what CompressAI's bpp counts)."""
        return sum(len(s) for group in self.strings for s in group)

    def to_bytes(self) -> bytes:
        _check_fields(self)
        options = json.dumps(self.options, sort_keys=True, separators=(",", ":")).encode() if self.options else b""
        body = bytearray()
        body += _FIXED.pack(bytes.fromhex(self.fingerprint), float(self.lmbda or 0.0), self.width, self.height,
                            MODES.index(self.mode), len(options))
        body += options
        body += struct.pack(">B", len(self.shape)) + b"".join(struct.pack(">I", int(d)) for d in self.shape)
        body += struct.pack(">B", len(self.strings))
        for group in self.strings:
            body += struct.pack(">H", len(group))
            for string in group:
                body += struct.pack(">I", len(string)) + bytes(string)
        version = max(self.version, 2 if self.guard else 1)
        if version >= 2:
            body += struct.pack(">I", len(self.guard)) + bytes(self.guard)
        total = _PREFIX.size + len(body) + _CRC.size
        head = _PREFIX.pack(MAGIC, version, total) + bytes(body)
        return head + _CRC.pack(zlib.crc32(head))


def _check_fields(c: Container) -> None:
    """Refuse to write what :func:`parse` would refuse to read."""
    problems = []
    if len(c.fingerprint) != 64 or any(ch not in "0123456789abcdef" for ch in c.fingerprint.lower()):
        problems.append("fingerprint must be 64 hex digits")
    if c.lmbda is not None and not (math.isfinite(c.lmbda) and c.lmbda > 0):
        problems.append(f"lambda must be positive, got {c.lmbda}")
    if not (1 <= c.width and 1 <= c.height and c.width * c.height <= MAX_PIXELS):
        problems.append(f"image size {c.width}x{c.height} is outside 1 .. {MAX_PIXELS // 10**6} MP")
    if c.mode not in MODES:
        problems.append(f"mode must be one of {MODES}, got {c.mode!r}")
    if not 1 <= len(c.shape) <= MAX_RANK:
        problems.append(f"latent shape {c.shape} must have 1..{MAX_RANK} dimensions")
    if not 1 <= len(c.strings) <= MAX_GROUPS or any(not 1 <= len(g) <= MAX_STRINGS for g in c.strings):
        problems.append("strings must be 1..16 groups of 1..256 byte strings")
    if options_problem(c.options):
        problems.append(f"options {options_problem(c.options)}")
    elif len(json.dumps(c.options)) > MAX_OPTIONS_BYTES:
        problems.append("options are too long")
    if not isinstance(c.guard, (bytes, bytearray)) or len(c.guard) >= 2**32:
        problems.append("the index guard must be bytes, shorter than 4 GiB")
    if problems:
        raise BitstreamError("cannot write this .vrtk file: " + "; ".join(problems))


def options_problem(options) -> str | None:
    """What is wrong with inference options (None: nothing): a flat JSON object of names to finite numbers,
    booleans, strings or null, nested at most :data:`MAX_OPTIONS_DEPTH` deep. Iterative, so any depth is safe."""
    if not isinstance(options, dict):
        return "are not a JSON object"
    stack = [(options, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_OPTIONS_DEPTH:
            return f"are nested more than {MAX_OPTIONS_DEPTH} deep"
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                return "have a key that is not a string"
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return f"hold a non-finite number ({value})"
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            return "hold an integer out of the 64-bit range"
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            return f"hold a {type(value).__name__}"
    return None


def _parse_options(raw: bytes) -> dict:
    """The options JSON, or a BitstreamError: never a RecursionError (deep nesting), never a huge integer."""
    try:
        options = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError and long integers are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise BitstreamError(f"damaged .vrtk file: options are not valid JSON ({reason})") from None
    problem = options_problem(options)
    if problem:
        raise BitstreamError(f"damaged .vrtk file: options {problem}")
    return options


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class _Reader:
    """Reads fields from the checked body; running past the end is a clear error, not an IndexError."""

    def __init__(self, data: bytes, start: int, end: int):
        self.data, self.pos, self.end = data, start, end

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.pos:
            raise BitstreamError(f"damaged .vrtk file: {what} needs {size} bytes but only {self.end - self.pos} "
                                 "remain")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, what: str):
        s = struct.Struct(">" + fmt)
        values = s.unpack(self.take(s.size, what))
        return values[0] if len(values) == 1 else values


def peek_version(data: bytes) -> int | None:
    """The format version of something that starts like a .vrtk file, else None."""
    if len(data) >= _PREFIX.size and data[:4] == MAGIC:
        return _PREFIX.unpack_from(data)[1]
    return None


def parse(data: bytes, max_pixels: int = MAX_PIXELS) -> Container:
    """Bytes -> Container, refusing anything damaged, truncated, newer or absurd with a BitstreamError."""
    data = bytes(data)
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError("not a .vrtk file (wrong magic bytes)")
    if len(data) < _PREFIX.size:
        raise BitstreamError(f"truncated .vrtk file: {len(data)} bytes")
    _, version, total = _PREFIX.unpack_from(data)
    if version > VERSION:
        raise BitstreamError(f"this .vrtk file has format version {version}, newer than this vrtk reads "
                             f"({VERSION}); upgrade vrtk")
    if version < 1:
        raise BitstreamError(f"damaged .vrtk file: format version {version}")
    if len(data) < total:
        raise BitstreamError(f"truncated .vrtk file: {len(data)} of {total} bytes")
    if len(data) > total:
        raise BitstreamError(f"damaged .vrtk file: {len(data) - total} unexpected bytes after the end")
    if total < MIN_LENGTH:
        raise BitstreamError(f"damaged .vrtk file: {total} bytes is shorter than any valid file")
    (stored_crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(data[:total - _CRC.size]) != stored_crc:
        raise BitstreamError("damaged .vrtk file: checksum mismatch")

    r = _Reader(data, _PREFIX.size, total - _CRC.size)
    fp, lmbda, width, height, mode_id, opt_len = _FIXED.unpack(r.take(_FIXED.size, "header"))
    if not (1 <= width and 1 <= height):
        raise BitstreamError(f"damaged .vrtk file: image size {width}x{height}")
    if width * height > max_pixels:
        raise BitstreamError(f"refusing a {width}x{height} image: larger than the {max_pixels / 1e6:g} MP limit")
    if mode_id >= len(MODES):
        raise BitstreamError(f"damaged .vrtk file: unknown image mode {mode_id}")
    if not (math.isfinite(lmbda) and lmbda >= 0):
        raise BitstreamError(f"damaged .vrtk file: lambda {lmbda}")
    if opt_len > MAX_OPTIONS_BYTES:
        raise BitstreamError(f"damaged .vrtk file: {opt_len} bytes of options (limit {MAX_OPTIONS_BYTES})")
    options = _parse_options(r.take(opt_len, "options")) if opt_len else {}
    rank = r.unpack("B", "latent shape rank")
    if not 1 <= rank <= MAX_RANK:
        raise BitstreamError(f"damaged .vrtk file: latent shape of rank {rank}")
    shape = tuple(r.unpack("I", "latent shape") for _ in range(rank))
    if any(d < 1 or d > max(width, height) for d in shape):
        raise BitstreamError(f"damaged .vrtk file: latent shape {shape} does not fit a {width}x{height} image")
    groups = r.unpack("B", "string group count")
    if not 1 <= groups <= MAX_GROUPS:
        raise BitstreamError(f"damaged .vrtk file: {groups} string groups")
    strings = []
    for g in range(groups):
        count = r.unpack("H", f"string count of group {g}")
        if not 1 <= count <= MAX_STRINGS:
            raise BitstreamError(f"damaged .vrtk file: {count} strings in group {g}")
        group = []
        for i in range(count):
            length = r.unpack("I", f"length of string {g}.{i}")
            group.append(r.take(length, f"string {g}.{i}"))
        strings.append(group)
    guard = r.take(r.unpack("I", "index guard length"), "index guard") if version >= 2 else b""
    if r.pos != r.end:
        raise BitstreamError(f"damaged .vrtk file: {r.end - r.pos} bytes left over after the last string")
    return Container(fingerprint=fp.hex(), lmbda=lmbda or None, width=width, height=height, mode=MODES[mode_id],
                     shape=shape, strings=strings, options=options, version=version, guard=guard)
