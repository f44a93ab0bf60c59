"""Fuzzing the .vrtk reader and the entropy-coded payload: every damaged file ends in a VrtkError or a valid decode.

A real file is made with a tiny saved model (its analysis transform scaled up, so the untrained latents are large
enough to give the rANS coder real work). Mutations that would only hit the checksum are made both with and
without recomputing it, so the field checks and CompressAI's decoder behind them see the garbage too. Cases that
could crash the interpreter (a decoder reading past its buffer) run in a subprocess.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib

import pytest
import torch
from conftest import TINY_KWARGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrtk.api import Coder
from vrtk.container import MAX_PIXELS, VERSION, Container, parse
from vrtk.data import synthetic_images
from vrtk.errors import BitstreamError, VrtkError
from vrtk.model import load_model, save_model, wrap
from vrtk.zoo import BaseSpec

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WIDTH_AT, HEIGHT_AT = 54, 58  # offsets of the width and height fields (see vrtk/container.py)


def make_model(folder):
    """The tiny hyperprior model, saved and loaded back; g_a's last layer scaled so latents cost real bits."""
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    with torch.no_grad():
        wrapped.net.g_a[-1].weight.mul_(40.0)
    wrapped.net.update(force=True)
    return load_model(save_model(wrapped, folder))


def make_file(wrapped) -> bytes:
    image = synthetic_images(1, height=40, width=56, seed=1)[0].float() / 255
    return Coder(wrapped).compress(image).data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "model"
    make_model(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def valid(model) -> bytes:
    return make_file(model)


def recrc(data: bytes) -> bytes:
    body = bytes(data[:-4])
    return body + struct.pack(">I", zlib.crc32(body))


def outcome(model, data: bytes) -> str:
    """'rejected' or 'decoded'; any other exception fails the test. A decode must have the header's size."""
    try:
        decoded = Coder(model).decode(bytes(data))
    except VrtkError:
        return "rejected"
    header = parse(data)
    assert tuple(decoded.tensor.shape) == (3, header.height, header.width)
    assert decoded.mode == header.mode
    assert torch.isfinite(decoded.tensor).all()
    return "decoded"


def with_strings(valid: bytes, strings) -> bytes:
    """The valid file with other entropy-coded strings, written properly (so the checksum fits)."""
    h = parse(valid)
    return Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=h.width, height=h.height, mode=h.mode,
                     shape=h.shape, strings=strings, options=h.options).to_bytes()


def test_the_fixture_file_decodes_and_has_a_real_payload(model, valid):
    assert outcome(model, valid) == "decoded"
    assert all(len(s) >= 8 for group in parse(valid).strings for s in group)
    assert parse(valid).payload_bytes >= 40


@FUZZ
@given(data=st.data())
def test_truncation_is_refused(model, valid, data):
    n = data.draw(st.integers(0, len(valid) - 1))
    assert outcome(model, valid[:n]) == "rejected"


@FUZZ
@given(flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=8), fix_crc=st.booleans())
def test_bit_flips(model, valid, flips, fix_crc):
    data = bytearray(valid)
    for f in flips:
        bit = f % (len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    if bytes(data) == valid:
        return
    if fix_crc:
        outcome(model, recrc(data))
    else:  # the checksum (or magic, version, length before it) catches every unrepaired flip
        assert outcome(model, data) == "rejected"


@FUZZ
@given(pos=st.integers(0, 10**6), insert=st.binary(min_size=0, max_size=12), delete=st.integers(0, 12),
       fix_crc=st.booleans())
def test_byte_insert_and_delete(model, valid, pos, insert, delete, fix_crc):
    pos = pos % len(valid)
    data = valid[:pos] + insert + valid[pos + delete:]
    if data == valid:
        return
    if fix_crc and len(data) > 4:
        data = recrc(data)
        outcome(model, data)
    else:
        assert outcome(model, data) == "rejected"


@FUZZ
@given(total=st.integers(0, 2**64 - 1), fix_crc=st.booleans())
def test_wrong_total_length_is_refused(model, valid, total, fix_crc):
    if total == len(valid):
        return
    data = valid[:6] + struct.pack(">Q", total) + valid[14:]
    assert outcome(model, recrc(data) if fix_crc else data) == "rejected"


@FUZZ
@given(which=st.integers(0, 3), length=st.integers(0, 2**32 - 1))
def test_wrong_string_length_fields(model, valid, which, length):
    """Rewrite one of the 4-byte string lengths (found by walking the layout) and repair the checksum."""
    h = parse(valid)
    lengths, pos = [], len(valid) - 4
    for group in reversed(h.strings):  # strings sit at the end, each preceded by its 4-byte length
        for s in reversed(group):
            pos -= len(s) + 4
            lengths.append(pos)
        pos -= 2
    at = lengths[which % len(lengths)]
    if struct.unpack_from(">I", valid, at)[0] == length:
        return
    data = recrc(valid[:at] + struct.pack(">I", length) + valid[at + 4:])
    assert outcome(model, data) == "rejected"


@FUZZ
@given(width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1))
def test_any_image_size_in_the_header(model, valid, width, height):
    data = bytearray(valid)
    struct.pack_into(">II", data, WIDTH_AT, width, height)
    outcome(model, recrc(data))


@pytest.mark.parametrize("size", [(2**32 - 1, 2**32 - 1), (100_000, 100_000), (MAX_PIXELS + 1, 1), (8001, 8000)])
def test_absurd_image_size_is_refused_fast_without_allocating(model, valid, size):
    """Even with a latent shape and strings that match the claimed size, nothing big is allocated."""
    h = parse(valid)
    width, height = size
    shape = tuple(min(-(-d // 64), 2**32 - 1) for d in (height, width))
    hostile = bytearray(valid)
    struct.pack_into(">II", hostile, WIDTH_AT, width, height)
    hostile = recrc(hostile)
    consistent = Container(fingerprint=h.fingerprint, lmbda=None, width=1, height=1, mode="RGB", shape=(1, 1),
                           strings=h.strings).to_bytes()
    consistent = bytearray(consistent)
    struct.pack_into(">II", consistent, WIDTH_AT, width, height)
    rank_at = 65
    consistent = consistent[:rank_at + 1] + b"".join(struct.pack(">I", d) for d in shape) + consistent[rank_at + 9:]
    for data in (hostile, recrc(consistent)):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(BitstreamError, match="larger than|refusing"):
            Coder(model).decode(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 5_000_000, f"{peak} bytes allocated while refusing a {width}x{height} header"
        assert elapsed < 2.0


def test_wrong_magic_version_and_fingerprint_are_refused(model, valid):
    cases = {
        "magic": b"VRTX" + valid[4:],
        "magic, checksum repaired": recrc(b"PNG\x00" + valid[4:]),
        "newer version": recrc(valid[:4] + struct.pack(">H", VERSION + 1) + valid[6:]),
        "version 0": recrc(valid[:4] + struct.pack(">H", 0) + valid[6:]),
        "other model": recrc(valid[:14] + bytes(32) + valid[46:]),
        "empty": b"",
    }
    for name, data in cases.items():
        with pytest.raises(BitstreamError) as info:
            Coder(model).decode(data)
        assert str(info.value), name
    with pytest.raises(BitstreamError, match="another model"):
        Coder(model).decode(cases["other model"])
    with pytest.raises(BitstreamError, match="newer"):
        Coder(model).decode(cases["newer version"])


def test_a_file_for_another_model_is_refused(valid):
    torch.manual_seed(1)
    other = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    with pytest.raises(BitstreamError, match="another model"):
        Coder(other).decode(valid)


payload_mutation = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.integers(0, 10**6), min_size=1, max_size=6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.binary(min_size=0, max_size=96)),
    st.tuples(st.just("ones"), st.integers(0, 96)),
)


def mutate(s: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "flip":
        b = bytearray(s)
        for f in arg:
            if b:
                bit = f % (len(b) * 8)
                b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)
    if kind == "truncate":
        return s[:arg % (len(s) + 1)]
    if kind == "extend":
        return s + arg
    if kind == "replace":
        return arg
    return b"\xff" * arg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=st.integers(0, 1), mutation=payload_mutation, both=st.booleans())
def test_garbage_payload_with_a_valid_checksum_decodes_or_is_refused(model, valid, group, mutation, both):
    strings = [list(g) for g in parse(valid).strings]
    strings[group][0] = mutate(strings[group][0], mutation)
    if both:
        strings[1 - group][0] = mutate(strings[1 - group][0], mutation)
    outcome(model, with_strings(valid, strings))


@FUZZ
@given(shape=st.lists(st.integers(1, 200), min_size=1, max_size=4),
       counts=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_wrong_latent_shape_or_string_layout(model, valid, shape, counts):
    h = parse(valid)
    strings = [[h.strings[min(i, 1)][0]] * n for i, n in enumerate(counts)]
    data = Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=h.width, height=h.height, mode=h.mode,
                     shape=tuple(shape), strings=strings).to_bytes()
    result = outcome(model, data)
    if tuple(shape) != h.shape or counts[:2] != [1, 1]:
        assert result == "rejected"


HOSTILE = textwrap.dedent("""
    import sys
    import torch
    from vrtk.api import Coder
    from vrtk.container import Container, parse
    from vrtk.errors import VrtkError
    from vrtk.model import load_model

    torch.set_num_threads(1)
    model = load_model(sys.argv[1])
    h = parse(open(sys.argv[2], "rb").read())
    for width, height, payload in [(1500, 1100, b""), (1500, 1100, b"\\xff" * 3), (1024, 999, b"\\x00" * 9),
                                   (777, 1301, b"\\xff" * 16)]:
        shape = tuple(-(-d // 64) for d in (height, width))
        data = Container(fingerprint=h.fingerprint, lmbda=None, width=width, height=height, mode="RGB",
                         shape=shape, strings=[[payload], [payload]]).to_bytes()
        try:
            size = tuple(Coder(model).decode(data).tensor.shape)
            print("decoded", size, flush=True)
        except VrtkError as exc:
            print("rejected", exc, flush=True)
""")


def test_large_header_with_a_tiny_payload_does_not_crash_the_decoder(model_dir, valid, tmp_path):
    """Regression: a 100-byte file claiming a large image made CompressAI's rANS decoder read past its buffer
    (segfault). Run in a subprocess so a crash fails this test rather than killing the test run."""
    path = tmp_path / "valid.vrtk"
    path.write_bytes(valid)
    proc = subprocess.run([sys.executable, "-c", HOSTILE, str(model_dir), str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for line, (w, h) in zip(lines, [(1500, 1100), (1500, 1100), (1024, 999), (777, 1301)], strict=True):
        assert line.startswith("rejected") or line == f"decoded {(3, h, w)}"
