"""Decompression bombs and malformed headers (issue 17): a header must fit what its strings can carry, coding is
refused before allocating when it would need more memory than the budget, an allocation failure is named as such,
and no options JSON ends in a traceback."""

from __future__ import annotations

import json
import os
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
from test_hostile_folders import peak_memory_of

import vrtk
from vrtk import api, coding_limits
from vrtk.api import Coder
from vrtk.container import Container, parse
from vrtk.data import synthetic_images
from vrtk.errors import BitstreamError, ResourceError, VrtkError
from vrtk.images import LoadedImage
from vrtk.model import load_model, save_model, wrap
from vrtk.zoo import BaseSpec

OPTIONS_AT = 63  # offset of the options length (see vrtk/container.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs=dict(TINY_KWARGS)), [])
    with torch.no_grad():
        wrapped.net.g_a[-1].weight.mul_(40.0)  # latents that cost real bits
    wrapped.net.update(force=True)
    return save_model(wrapped, tmp_path_factory.mktemp("bombs") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def valid(model) -> bytes:
    return Coder(model).compress(synthetic_images(1, height=40, width=56, seed=1)[0].float() / 255).data


def with_options_bytes(valid: bytes, raw: bytes) -> bytes:
    """The valid file with its options JSON replaced by ``raw`` bytes, length and checksum repaired."""
    (old,) = struct.unpack_from(">H", valid, OPTIONS_AT)
    body = valid[:OPTIONS_AT] + struct.pack(">H", len(raw)) + raw + valid[OPTIONS_AT + 2 + old:-4]
    body = body[:6] + struct.pack(">Q", len(body) + 4) + body[14:]
    return body + struct.pack(">I", zlib.crc32(body))


def claiming(valid: bytes, width: int, height: int, strings=None) -> bytes:
    """A file for the same model whose header claims ``width`` x ``height`` (latent shape to match)."""
    h = parse(valid)
    shape = tuple(-(-d // 64) for d in (height, width))
    return Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=width, height=height, mode="RGB", shape=shape,
                     strings=strings or h.strings).to_bytes()


# -- options JSON -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, message", [
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),  # 4 KB, valid CRC: was a RecursionError traceback
    (b'{"a": ' * 400 + b"1" + b"}" * 400, "nested too deeply|more than 4 deep"),
    (b'{"a": [[[[[1]]]]]}', "more than 4 deep"),
    (b'{"ecg.scale": NaN}', "not valid JSON"),
    (b'{"ecg.scale": 1e999}', "non-finite"),
    (b'{"ecg.scale": ' + b"9" * 4050 + b"}", "out of the 64-bit range"),
    (b'{"ecg.scale": 0.5', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1]", "not a JSON object"),
], ids=["list 2000 deep", "object 400 deep", "5 deep", "NaN", "1e999", "4050 digits", "truncated", "not UTF-8",
        "not an object"])
def test_malformed_options_are_a_bitstream_error_everywhere(model, valid, raw, message):
    data = with_options_bytes(valid, raw)
    for decode in (lambda: parse(data), lambda: Coder(model).decode(data), lambda: vrtk.decompress(data, model),
                   lambda: api.decompress_tensor(data, model)):
        with pytest.raises(VrtkError, match=message):
            decode()


def test_options_that_cannot_be_read_back_are_not_written(model, valid):
    h = parse(valid)
    for options in ({"x": float("nan")}, {"x": [[[[[1]]]]]}):
        with pytest.raises(BitstreamError, match="cannot write"):
            Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=h.width, height=h.height, mode="RGB",
                      shape=h.shape, strings=h.strings, options=options).to_bytes()


# -- the header against what its strings can carry ----------------------------------------------------------------
@pytest.mark.parametrize("size", [(4096, 4096), (8000, 8000), (1, 64_000_000), (64_000_000, 1), (2000, 1500)])
def test_a_large_header_with_small_strings_is_refused_fast_without_allocating(model, valid, size):
    data = claiming(valid, *size)
    assert len(data) < 500  # the bomb was 363 bytes

    def decode():
        with pytest.raises(BitstreamError, match="needs at least .* bytes of entropy-coded hyper-latent"):
            Coder(model).decode(data)

    start = time.perf_counter()
    tracemalloc.start()
    decode()
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert python_peak < 5_000_000 and time.perf_counter() - start < 2.0  # 1 x 64e6 built a 12 GB bytes object
    if os.path.exists("/proc/self/clear_refs"):
        assert peak_memory_of(decode) < 50_000_000  # was 4.5 GB and 30 s for 4096 x 4096


ARCHS = [("bmshj2018-factorized", TINY_KWARGS), ("bmshj2018-hyperprior", TINY_KWARGS),
         ("mbt2018-mean", TINY_KWARGS), ("mbt2018", TINY_KWARGS), ("cheng2020-anchor", {"N": 8})]


@pytest.mark.parametrize("arch, kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_the_capacity_bound_never_refuses_a_real_file(arch, kwargs):
    """The bound is a lower bound on the bits rANS writes: real files of flat, noisy and smooth images (at two
    scales of the latents, so some channels' tables are peaked and some wide) all pass, and it is not vacuous."""
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch, weights="random", arch_kwargs=dict(kwargs)), [])
    wrapped.net.update(force=True)
    images = [torch.zeros(3, 64, 64), torch.ones(3, 100, 70), torch.rand(3, 64, 128),
              synthetic_images(1, height=130, width=70, seed=2)[0].float() / 255]
    for scale in (1.0, 30.0):
        if scale != 1.0:
            with torch.no_grad():
                wrapped.net.g_a[-1].weight.mul_(scale)
        coder = Coder(wrapped)
        for image in images:
            data = coder.compress(image).data
            h = parse(data)
            coding_limits.check_string_capacity(coder.net, h.shape, h.strings, h.width, h.height)  # must not raise
            assert coder.decode(data).tensor.shape == (3, h.height, h.width)
    eb = coding_limits.hyper_latent_bottleneck(coder.net)
    assert eb is not None and float(coding_limits.min_bits_per_symbol(eb._quantized_cdf, eb._cdf_length).sum()) > 0


# -- the memory budget --------------------------------------------------------------------------------------------
def test_coding_over_the_memory_budget_is_refused_before_allocating(model, valid):
    image = LoadedImage(torch.zeros(3, 1000, 1200), "RGB")
    with pytest.raises(ResourceError, match="VRTK_MEMORY_BUDGET") as info:
        Coder(model, memory_budget="64M").compress(image)
    assert "encoding a 1200x1000 image" in str(info.value) and "64.0 MiB" in str(info.value)
    strings = [[os.urandom(2000)], [os.urandom(20_000)]]  # enough bytes to pass the capacity check
    with pytest.raises(ResourceError, match="decoding a 3000x3000 image"):
        Coder(model, memory_budget="256M").decode(claiming(valid, 3000, 3000, strings))


def test_the_budget_comes_from_the_environment(model, monkeypatch):
    image = LoadedImage(torch.zeros(3, 1000, 1200), "RGB")
    monkeypatch.setenv("VRTK_MEMORY_BUDGET", "64M")
    with pytest.raises(ResourceError):
        Coder(model).compress(image)
    monkeypatch.setenv("VRTK_MEMORY_BUDGET", "lots")
    with pytest.raises(VrtkError, match="VRTK_MEMORY_BUDGET: 'lots' is not a size"):
        Coder(model)
    monkeypatch.setenv("VRTK_MEMORY_BUDGET", "2G")
    assert len(Coder(model).compress(image).data) > 0


def test_a_64_megapixel_image_is_refused_clearly_by_the_default_budget(model):
    """8000x8000 (the issue's PNG of zeros) fits the 64 MP limit; with a real model (N=64, M=96, the default's
    size) it needs more than the default 8 GiB, so it is refused up front instead of failing inside torch."""
    torch.manual_seed(0)
    big = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 64, "M": 96}), [])
    big.net.update(force=True)
    with pytest.raises(ResourceError, match="8000x8000 image with this model needs about .* GiB"):
        Coder(big).check_memory(8000, 8000, "encoding", None)


ESTIMATE = textwrap.dedent("""
    import sys, torch
    from vrtk.api import Coder
    from vrtk.images import LoadedImage
    from vrtk.coding_limits import coding_bytes
    from vrtk.model import load_model
    torch.set_num_threads(1)
    coder = Coder(load_model(sys.argv[1]))
    side = int(sys.argv[2])
    image = LoadedImage(torch.rand(3, side, side), "RGB")
    coder.compress(LoadedImage(torch.rand(3, 64, 64), "RGB"))  # warm up allocators and the probe

    def status(field):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

    peaks = []
    for step in ("encode", "decode"):
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
        before = status("VmRSS:")
        data = coder.compress(image).data if step == "encode" else coder.decode(data)
        peaks.append(status("VmHWM:") - before)
    print(max(peaks), coding_bytes(coder.net, side, side, groups=2))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_the_memory_estimate_is_above_the_measured_peak(model_dir):
    proc = subprocess.run([sys.executable, "-c", ESTIMATE, str(model_dir), "1024"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, estimate = map(int, proc.stdout.split())
    assert peak < estimate < 8 * peak + coding_limits.FIXED_OVERHEAD  # safe, and not absurdly so


def test_an_allocation_failure_is_named_as_such(model, valid, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 4000000000 bytes")

    monkeypatch.setattr(api, "_guard_strings", no_memory)
    with pytest.raises(ResourceError, match="out of memory while decoding a 56x40 image") as info:
        Coder(model).decode(valid)
    assert "does not decode" not in str(info.value)

    def memory_error(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("vrtk.codec.pad", memory_error)
    with pytest.raises(ResourceError, match="out of memory while encoding"):
        Coder(model).compress(torch.rand(3, 40, 56))


def test_a_damaged_payload_is_still_called_damaged(model, valid):
    h = parse(valid)
    garbage = Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=h.width, height=h.height, mode="RGB",
                        shape=(3, 2), strings=h.strings).to_bytes()
    with pytest.raises(BitstreamError, match="latent shape"):
        Coder(model).decode(garbage)


def test_options_json_in_a_file_written_by_another_tool_is_checked(model, valid):
    data = with_options_bytes(valid, json.dumps({"ecg.scale": "x"}).encode())
    with pytest.raises(VrtkError, match="no plugin|do not fit"):
        Coder(model).decode(data)
