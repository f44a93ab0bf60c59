"""The .vrtk byte format on its own: round trip, and every kind of damage refused with a BitstreamError."""

from __future__ import annotations

import struct
import zlib

import pytest

from vrtk import container
from vrtk.container import Container, parse
from vrtk.errors import BitstreamError


def sample(**changes) -> Container:
    values = dict(fingerprint="ab" * 32, lmbda=0.0123, width=90, height=70, mode="L", shape=(2, 2),
                  strings=[[b"\x01\x02\x03" * 7], [b"zz"]], options={"ecg.scale": 0.5})
    values.update(changes)
    return Container(**values)


def recrc(data: bytes) -> bytes:
    """Fix the checksum after a deliberate edit, to reach the field checks behind it."""
    body = data[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def test_round_trip_keeps_every_field():
    original = sample()
    data = original.to_bytes()
    assert data[:4] == b"VRTK"
    back = parse(data)
    assert back == original
    assert back.payload_bytes == 23
    assert parse(sample(lmbda=None, options={}).to_bytes()).lmbda is None


def test_layout_matches_the_documented_offsets():
    c = sample(options={})
    data = c.to_bytes()
    magic, version, total = struct.unpack_from(">4sHQ", data, 0)
    assert (magic, version, total) == (b"VRTK", 1, len(data))
    assert data[14:46] == bytes.fromhex(c.fingerprint)
    assert struct.unpack_from(">d", data, 46)[0] == c.lmbda
    assert struct.unpack_from(">IIBH", data, 54) == (90, 70, 1, 0)
    assert struct.unpack_from(">B2I", data, 65) == (2, 2, 2)
    assert data[74] == 2  # groups
    assert struct.unpack_from(">HI", data, 75) == (1, 21)
    assert struct.unpack(">I", data[-4:])[0] == zlib.crc32(data[:-4])


@pytest.mark.parametrize("data, message", [
    (b"", "wrong magic"), (b"PNG\x89rest", "wrong magic"), (b"VRTK\x00", "truncated"),
])
def test_not_a_vrtk_file(data, message):
    with pytest.raises(BitstreamError, match=message):
        parse(data)


def test_newer_version_is_refused_before_anything_else():
    data = bytearray(sample().to_bytes())
    data[4:6] = struct.pack(">H", container.VERSION + 1)
    with pytest.raises(BitstreamError, match="newer"):
        parse(bytes(data))


def test_every_truncation_is_refused():
    data = sample().to_bytes()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            parse(data[:cut])
    with pytest.raises(BitstreamError, match="truncated"):
        parse(data[:-1])


def test_every_single_byte_flip_is_refused():
    data = sample().to_bytes()
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        with pytest.raises(BitstreamError):
            parse(bytes(damaged))


def test_trailing_bytes_are_refused():
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        parse(sample().to_bytes() + b"\x00")


def _edit(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return recrc(bytes(out))


@pytest.mark.parametrize("offset, fmt, value, message", [
    (54, ">I", 1_000_000, "MP limit"),  # 1e6 x 70 pixels: refused before any decoding
    (54, ">I", 0, "image size"),
    (62, ">B", 7, "image mode"),
    (46, ">d", float("nan"), "lambda"),
    (63, ">H", 60_000, "options"),
])
def test_absurd_fields_are_refused_even_with_a_valid_checksum(offset, fmt, value, message):
    data = _edit(sample(options={}).to_bytes(), offset, fmt, value)
    with pytest.raises(BitstreamError, match=message):
        parse(data)


def test_lengths_that_run_past_the_end_are_refused():
    data = sample(options={}).to_bytes()
    for offset, fmt, value, message in [(77, ">I", 2**31, "needs"), (75, ">H", 0, "strings in group"),
                                        (74, ">B", 200, "string groups"), (65, ">B", 9, "rank"),
                                        (66, ">I", 10**6, "latent shape")]:
        with pytest.raises(BitstreamError, match=message):
            parse(_edit(data, offset, fmt, value))


def test_options_must_be_a_json_object():
    good = sample(options={"a": 1}).to_bytes()
    bad = good.replace(b'{"a":1}', b'[1,2,3]')
    with pytest.raises(BitstreamError, match="JSON object"):
        parse(recrc(bad))


def test_writer_refuses_what_the_reader_would_refuse():
    for changes in [dict(width=0), dict(mode="RGBA"), dict(fingerprint="xyz"), dict(shape=()),
                    dict(strings=[]), dict(lmbda=-1.0), dict(width=10_000, height=10_000)]:
        with pytest.raises(BitstreamError, match="cannot write"):
            sample(**changes).to_bytes()


def test_custom_pixel_limit():
    data = sample().to_bytes()
    with pytest.raises(BitstreamError, match="MP limit"):
        parse(data, max_pixels=1000)
