"""Smaller losses from issue 17: outputs created exclusively (two writers, one output: exactly one wins), stale
temporaries of killed processes removed, and images vrtk cannot code whole (animations, multi-page TIFFs, 16- and
32-bit samples) coded with a note that says exactly what was done."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_codec_roundtrip import tiny_variable_rate_model

from vrtk import fileio
from vrtk.errors import ImageError, VrtkError
from vrtk.fileio import atomic_path, remove_stale_temporaries, write_bytes_atomic
from vrtk.images import load_image


# -- exclusive outputs --------------------------------------------------------------------------------------------
def test_without_overwrite_an_existing_output_is_never_replaced(tmp_path):
    target = tmp_path / "out.vrtk"
    write_bytes_atomic(target, b"first", overwrite=False)
    with pytest.raises(VrtkError, match="output exists"):
        write_bytes_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["out.vrtk"]
    write_bytes_atomic(target, b"third")  # --force
    assert target.read_bytes() == b"third"


def test_two_racing_writers_one_output_exactly_one_wins(tmp_path):
    """Both writers have passed any existence check (the barrier) before either moves its file into place."""
    target = tmp_path / "out.vrtk"
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def writer(name: str) -> None:
        try:
            with atomic_path(target, overwrite=False) as tmp:
                tmp.write_bytes(name.encode() * 1000)
                barrier.wait(timeout=10)
            outcome[name] = "wrote"
        except VrtkError as exc:
            outcome[name] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcome.values())[1] == "wrote" and "output exists" in sorted(outcome.values())[0]
    winner = next(n for n, v in outcome.items() if v == "wrote")
    assert target.read_bytes() == winner.encode() * 1000
    assert os.listdir(tmp_path) == ["out.vrtk"]  # the loser's temporary is gone


def test_compress_does_not_replace_an_output_that_appeared_meanwhile(tmp_path, tiny_images, monkeypatch):
    """The second of two `vrtk compress` runs to one output: planning passed, then the other run wrote the file."""
    tiny_variable_rate_model(tmp_path / "model", ["bm"])
    src, out = tmp_path / "a.png", tmp_path / "a.vrtk"
    Image.fromarray(tiny_images[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(src)
    from vrtk.api import Coder

    real_compress = Coder.compress

    def other_writer_first(self, *args, **kwargs):
        out.write_bytes(b"the other run's file")
        return real_compress(self, *args, **kwargs)

    monkeypatch.setattr(Coder, "compress", other_writer_first)
    code, _, stderr = run_cli("compress", str(src), "-o", str(out), "--model", str(tmp_path / "model"))
    assert code == 2 and "output exists" in stderr
    assert out.read_bytes() == b"the other run's file"


# -- stale temporaries ---------------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    old = time.time() - 3600
    dead = dead_pid()
    stale = tmp_path / f".out.png.vrtk-{dead}-abcd1234.tmp"
    fresh = tmp_path / f".out.png.vrtk-{dead}-efgh5678.tmp"  # a process on another host may still write it
    live = tmp_path / f".out.png.vrtk-{os.getpid()}-ijkl9012.tmp"
    other = tmp_path / ".out.png.abcd1234.tmp"  # not our pattern: never touched
    for path in (stale, fresh, live, other):
        path.write_bytes(b"partial")
    for path in (stale, live, other):
        os.utime(path, (old, old))
    write_bytes_atomic(tmp_path / "result.bin", b"x")
    assert not stale.exists() and fresh.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == []  # once per folder and process


KILLED = textwrap.dedent("""
    import sys, time
    from vrtk.fileio import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half an image")
        print("writing", flush=True)
        time.sleep(60)
""")


def test_a_write_killed_with_sigkill_leaves_nothing_after_the_next_run(tmp_path, monkeypatch):
    target = tmp_path / "decoded.png"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)  # the process this test started
    proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and not target.exists()
    monkeypatch.setattr(fileio, "STALE_AFTER_S", 0.0)
    write_bytes_atomic(target, b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded.png"]


# -- images coded only in part: say what was done -----------------------------------------------------------------
def _rgb(seed=0, h=20, w=30):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_animations_and_multi_page_files_say_only_the_first_frame_is_coded(tmp_path):
    frames = [Image.fromarray(_rgb(i)) for i in range(3)]
    frames[0].convert("P").save(tmp_path / "a.gif", save_all=True, append_images=[f.convert("P") for f in frames[1:]])
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    expected = {"a.gif": "animated GIF: only the first of its 3 frames is coded",
                "a.png": "animated PNG (APNG): only the first of its 3 frames is coded",
                "a.tif": "multi-page TIFF: only the first of its 3 pages is coded"}
    for name, note in expected.items():
        image = load_image(tmp_path / name)
        assert note in image.notes, (name, image.notes)
    frames[0].save(tmp_path / "still.png")
    assert load_image(tmp_path / "still.png").notes == []


def png16(path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def tiff16(path, array: np.ndarray) -> None:
    """A 16-bit RGB TIFF (big-endian, uncompressed, one strip) written by hand."""
    h, w, c = array.shape
    pixels = array.astype(">u2").tobytes()
    entries = [(256, w), (257, h), (258, None), (259, 1), (262, 2), (273, None), (277, c), (278, h),
               (279, len(pixels))]
    ifd = 8
    bits_at = ifd + 2 + len(entries) * 12 + 4
    pixels_at = bits_at + 2 * c
    out = b"MM\x00\x2a" + struct.pack(">IH", ifd, len(entries))
    for tag, value in entries:
        if tag == 258:
            out += struct.pack(">HHII", tag, 3, c, bits_at)
        elif tag == 273:
            out += struct.pack(">HHII", tag, 4, 1, pixels_at)
        else:
            out += struct.pack(">HHIHH", tag, 3, 1, value, 0) if value < 65536 else struct.pack(">HHII", tag, 4, 1,
                                                                                                  value)
    path.write_bytes(out + b"\x00\x00\x00\x00" + struct.pack(">" + "H" * c, *[16] * c) + pixels)


@pytest.mark.parametrize("writer", [png16, tiff16], ids=["png", "tiff"])
def test_sixteen_bit_rgb_says_it_was_reduced_to_eight_bits(tmp_path, writer):
    array = np.random.default_rng(0).integers(0, 65536, (20, 30, 3))
    path = tmp_path / ("a.png" if writer is png16 else "a.tif")
    writer(path, array)
    image = load_image(path)
    assert image.mode == "RGB"
    assert "16-bit RGB reduced to 8 bits per sample (the top 8 bits of each)" in image.notes
    top = (image.tensor * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(top, (array >> 8).astype(np.uint8))  # what the note says was done


def test_a_32_bit_tiff_is_called_32_bit_and_scaled_by_its_depth(tmp_path):
    data = np.array([[0, 2**31 - 1], [2**30, -5]], dtype=np.int32)
    Image.fromarray(data).save(tmp_path / "a.tif")
    image = load_image(tmp_path / "a.tif")
    note = " ".join(image.notes)
    assert "32-bit signed grayscale reduced to 8 bits" in note and "16-bit" not in note
    assert "0..2147483647 mapped to 0..255" in note and "1 samples outside 0..2147483647 clipped" in note
    gray = (image.tensor[0] * 255).round().numpy()
    assert gray.tolist() == [[0, 255], [128, 0]]


def test_sixteen_bit_grayscale_keeps_its_note(tmp_path):
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").notes == ["16-bit grayscale reduced to 8 bits per sample, 0..65535 "
                                                    "mapped to 0..255"]


def test_floating_point_images_are_refused_with_the_reason(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="floating-point samples have no fixed range"):
        load_image(tmp_path / "f.tif")


def test_the_cli_shows_the_note(tmp_path):
    tiny_variable_rate_model(tmp_path / "model", ["bm"])
    frames = [Image.fromarray(_rgb(i)) for i in range(2)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    code, _, stderr = run_cli("compress", str(tmp_path / "a.gif"), "-o", str(tmp_path / "a.vrtk"),
                              "--model", str(tmp_path / "model"))
    assert code == 0, stderr
    assert "animated GIF: only the first of its 2 frames is coded" in stderr


def test_running_out_of_memory_while_reading_is_named_as_such(tmp_path, monkeypatch):
    from vrtk import images
    from vrtk.errors import ResourceError

    Image.fromarray(_rgb()).save(tmp_path / "a.png")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(images, "_to_array", no_memory)
    with pytest.raises(ResourceError, match="out of memory while reading the image"):
        load_image(tmp_path / "a.png")
