"""The scale-index guard: the few latent elements whose entropy-coder table the decoder must not choose alone.

A hyperprior codec codes each element of y with one of the Gaussian conditional's tables, picked by comparing the
hyper-decoder's scale s with the table's boundaries b_j (CompressAI's ``build_indexes``: index = number of b_j
below s, after a lower bound). Encoder and decoder compute s separately; two backends (torch and onnxruntime, or
torch on two CPUs) differ in the last bits of s, and an s within that difference of a boundary gets two different
tables: the rANS decoder then loses sync and decodes garbage from there on. No rule computed from s alone avoids
that (a boundary can always be straddled), so the encoder writes down the elements it cannot vouch for:

    guarded   every element whose |log s - log b| < margin for a boundary b of the lookup
    bytes     b"\\x01" (guard version), varint count, then per guarded element in increasing position order:
              varint(2 * (position - previous position) + side), side = 1 when the encoder's s is above b

The decoder puts each guarded element on the encoder's side of its nearest boundary (its own s is within the
margin of the same b) and looks up every index with CompressAI's own rule. Zero mismatches are guaranteed while
the backends' log-scales differ by less than the margin; torch and onnxruntime differed by at most 2.3e-6 on
Kodak (the v0.1 default's h_s, 24 images at two rates), so :data:`MARGIN` = 1e-5 leaves a factor of 4, for ~2
bytes per guarded element (benchmarks/backend_speed.py counts mismatches with and without the guard).
Files without a guard (.vrtk version 1) decode exactly as before.
"""

from __future__ import annotations

import torch

from vrtk.errors import BitstreamError

MARGIN = 1e-5  # natural-log units: 0.001 % of the scale
GUARD_VERSION = 1
NUDGE = 1e-3  # how far (log) the decoder moves a guarded scale past the boundary: far below the tables' spacing


def boundaries(conditional) -> torch.Tensor:
    """Sorted log of every scale where CompressAI's index lookup changes: it counts the table values t (all but
    the last) with max(s, bound) <= t, so the edges are the t at or above the lower bound."""
    table = conditional.scale_table.detach().double().cpu()[:-1]
    bound = float(conditional.lower_bound_scale.bound.detach().double().reshape(-1)[0])
    return torch.unique(torch.log(table[table >= bound]))


def _nearest(scales: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log s, the nearest edge, whether s > 0) for the flattened scales."""
    s = scales.detach().double().cpu().reshape(-1)
    positive = s > 0  # s <= 0 is clamped to the lower bound by every backend alike
    log_s = torch.log(torch.where(positive, s, torch.ones_like(s)))
    i = torch.bucketize(log_s, edges)  # edges[i - 1] < log_s <= edges[i]
    below, above = edges[(i - 1).clamp(min=0)], edges[i.clamp(max=len(edges) - 1)]
    nearest = torch.where((log_s - below).abs() < (log_s - above).abs(), below, above)
    return log_s, nearest, positive


def near_boundary(scales: torch.Tensor, edges: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Boolean (flattened) mask of the elements whose log-scale lies within ``margin`` of a boundary."""
    log_s, nearest, positive = _nearest(scales, edges)
    return ((log_s - nearest).abs() < margin) & positive


def make_guard(scales: torch.Tensor, edges: torch.Tensor, margin: float = MARGIN) -> bytes:
    """The guard of one image's scales, as the encoder computed them."""
    log_s, nearest, positive = _nearest(scales, edges)
    positions = torch.nonzero(((log_s - nearest).abs() < margin) & positive).reshape(-1)
    if not len(positions):
        return b""
    sides = (log_s[positions] > nearest[positions]).tolist()
    out = bytearray([GUARD_VERSION]) + _varint(len(positions))
    previous = 0
    for p, side in zip(positions.tolist(), sides, strict=True):
        out += _varint(2 * (p - previous) + int(side))
        previous = p
    return bytes(out)


def apply_guard(scales: torch.Tensor, guard: bytes, edges: torch.Tensor) -> torch.Tensor:
    """One image's scales with every guarded element moved just past its nearest boundary, to the encoder's side
    (index lookups on the result agree with the encoder's); a damaged guard is refused."""
    if not guard:
        return scales
    if guard[0] != GUARD_VERSION:
        raise BitstreamError(f"index guard version {guard[0]} is not one this vrtk reads ({GUARD_VERSION})")
    reader = _Reader(guard, 1)
    count = reader.varint()
    total = scales.numel()
    if count > total:
        raise BitstreamError(f"damaged .vrtk file: {count} guarded elements in a latent of {total}")
    positions, sides = [], []
    position = 0
    for i in range(count):
        gap, side = divmod(reader.varint(), 2)
        position += gap
        if (i and not gap) or position >= total:
            raise BitstreamError(f"damaged .vrtk file: guarded position {position} is repeated or outside the "
                                 f"latent ({total} elements)")
        positions.append(position)
        sides.append(side)
    if reader.pos != len(guard):
        raise BitstreamError(f"damaged .vrtk file: {len(guard) - reader.pos} bytes left over in the index guard")
    index = torch.tensor(positions, dtype=torch.long)
    _, nearest, _ = _nearest(scales.reshape(-1)[index.to(scales.device)], edges)
    side = torch.tensor(sides, dtype=torch.float64) * 2 - 1  # -1: at or below the boundary, +1: above it
    out = scales.clone()
    out.reshape(-1)[index.to(out.device)] = torch.exp(nearest + side * NUDGE).to(out.dtype).to(out.device)
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise BitstreamError("damaged .vrtk file: the index guard ends inside a number")
            if shift > 35:
                raise BitstreamError("damaged .vrtk file: a number in the index guard is too long")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
