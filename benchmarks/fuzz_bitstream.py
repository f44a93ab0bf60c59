"""Fuzz the .vrtk reader and decoder with many mutations of a real file; count how each one ends.

A tiny model (bmshj2018-hyperprior, N=8, M=12, random weights with its analysis transform scaled so latents cost
real bits) is saved to a temporary folder and codes one small synthetic image. Each mutation of that file is one
of: truncation, bit flips (checksum left or repaired), byte insert/delete, a changed length/size/shape/count field,
wrong magic/version/fingerprint, or garbage in the entropy-coded strings with a valid checksum (so CompressAI's
rANS decoder runs on it). Mutations are decoded in a worker subprocess, one at a time with a per-case timeout; a
worker that dies (segfault, abort, out of memory) or stops answering is counted and replaced.

    rejected   a clean vrtk error (vrtk.errors.VrtkError)
    decoded    a valid decode: a finite image of the header's size and mode
    crashed    any other exception, a wrong-sized decode, or a dead worker
    timed out  no answer within --timeout seconds

    python benchmarks/fuzz_bitstream.py --mutations 10000 --seed 0

Exit status 1 when anything crashed or timed out.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

KINDS = ("truncate", "flip", "flip+crc", "insert/delete", "insert/delete+crc", "total length", "string length",
         "image size", "latent shape", "string count", "magic/version/fingerprint", "payload")


def recrc(data: bytes) -> bytes:
    body = bytes(data[:-4])
    return body + struct.pack(">I", zlib.crc32(body))


def string_length_offsets(data: bytes, strings) -> list[int]:
    out, pos = [], len(data) - 4
    for group in reversed(strings):
        for s in reversed(group):
            pos -= len(s) + 4
            out.append(pos)
        pos -= 2
    return out


def garble(rng: random.Random, s: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0 and s:
        b = bytearray(s)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:
        return s[:rng.randrange(len(s) + 1)]
    if kind == 2:
        return s + rng.randbytes(rng.randint(1, 64))
    if kind == 3:
        return rng.randbytes(rng.randint(0, 128))
    if kind == 4:
        return bytes([rng.choice((0x00, 0xFF))]) * rng.randint(0, 128)
    b = bytearray(s)
    if b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def mutate(rng: random.Random, valid: bytes) -> tuple[str, bytes]:
    """One random mutation of the valid file: (kind, bytes)."""
    from vrtk.container import Container, parse

    h = parse(valid)
    kind = rng.choice(KINDS)
    data = bytearray(valid)
    if kind == "truncate":
        return kind, valid[:rng.randrange(len(valid))]
    if kind.startswith("flip"):
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return kind, recrc(data) if kind.endswith("crc") else bytes(data)
    if kind.startswith("insert/delete"):
        pos = rng.randrange(len(valid))
        out = valid[:pos] + rng.randbytes(rng.randint(0, 12)) + valid[pos + rng.randint(0, 12):]
        return kind, recrc(out) if kind.endswith("crc") and len(out) > 4 else out
    if kind == "total length":
        value = rng.choice((0, len(valid) - 1, len(valid) + 1, 2**64 - 1, rng.randrange(2**64)))
        out = valid[:6] + struct.pack(">Q", value) + valid[14:]
        return kind, recrc(out) if rng.random() < 0.5 else out
    if kind == "string length":
        at = rng.choice(string_length_offsets(valid, h.strings))
        value = rng.choice((0, 1, 7, 2**32 - 1, rng.randrange(2**32), rng.randrange(256)))
        struct.pack_into(">I", data, at, value)
        return kind, recrc(data)
    if kind == "image size":
        def pick():
            return rng.choice((0, 1, 63, 64, 65, 2**32 - 1, rng.randrange(2**32), rng.randrange(1, 20000)))
        struct.pack_into(">II", data, 54, pick(), pick())
        return kind, recrc(data)
    fields = dict(fingerprint=h.fingerprint, lmbda=h.lmbda, width=h.width, height=h.height, mode=h.mode,
                  shape=h.shape, strings=[list(g) for g in h.strings], options=h.options)
    if kind == "latent shape":
        if rng.random() < 0.5:  # a large image whose latent shape fits it: the decoder runs on a tiny payload
            fields["width"], fields["height"] = rng.randrange(1, 1200), rng.randrange(1, 1200)
            fields["shape"] = tuple(-(-d // 64) for d in (fields["height"], fields["width"]))
            fields["strings"] = [[garble(rng, g[0])] for g in fields["strings"]]
        else:
            fields["shape"] = tuple(rng.randrange(1, 300) for _ in range(rng.randint(1, 4)))
        return kind, Container(**fields).to_bytes()
    if kind == "string count":
        fields["strings"] = [[g[0]] * rng.randint(1, 6) for g in fields["strings"]][:rng.randint(1, 2)]
        if rng.random() < 0.5:
            fields["strings"] += [[rng.randbytes(rng.randint(0, 16))] for _ in range(rng.randint(1, 3))]
        return kind, Container(**fields).to_bytes()
    if kind == "magic/version/fingerprint":
        which = rng.randrange(3)
        if which == 0:
            data[:4] = rng.randbytes(4)
        elif which == 1:
            struct.pack_into(">H", data, 4, rng.choice((0, 2, 3, 2**16 - 1, rng.randrange(2**16))))
        else:
            data[14 + rng.randrange(32)] ^= 1 << rng.randrange(8)
        return kind, recrc(data)
    groups = fields["strings"]
    for g in rng.sample(range(len(groups)), rng.randint(1, len(groups))):
        groups[g][0] = garble(rng, groups[g][0])
    return kind, Container(**fields).to_bytes()


# -- the worker: reads hex-encoded files from stdin, answers one line per file ------------------------------------
def worker(model_dir: str) -> None:
    import torch

    from vrtk.api import Coder
    from vrtk.container import parse
    from vrtk.errors import VrtkError
    from vrtk.model import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir)
    print("ready", flush=True)
    for line in sys.stdin:
        data = bytes.fromhex(line.strip())
        try:
            decoded = Coder(model).decode(data)
            h = parse(data)
            ok = (tuple(decoded.tensor.shape) == (3, h.height, h.width) and decoded.mode == h.mode
                  and bool(torch.isfinite(decoded.tensor).all()))
            answer = "decoded" if ok else f"crashed wrong decode {tuple(decoded.tensor.shape)}"
        except VrtkError:
            answer = "rejected"
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            answer = f"crashed {type(exc).__name__}: {exc}"[:300].replace("\n", " ")
        print(answer, flush=True)


class LineWorker:
    """A child process answering one line per request line: a crash or hang there is counted, never inherited."""

    def __init__(self, argv: list[str], env: dict, start_timeout: float, cwd=None):
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
        if self.read(start_timeout) != "ready":
            self.stop()
            raise SystemExit("the fuzz worker did not start")

    def read(self, timeout: float) -> str | None:
        """The next answer line; None on timeout, "dead" when the worker is gone."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else "dead"

    def send(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # only the worker this script started
        self.proc.wait()


class Worker(LineWorker):
    def __init__(self, model_dir: str, start_timeout: float):
        env = dict(os.environ, PYTHONUNBUFFERED="1", VRTK_OFFLINE="1")
        super().__init__([__file__, "--worker", model_dir], env, start_timeout)

    def ask(self, data: bytes, timeout: float) -> str:
        if not self.send(data.hex()):
            return "dead"
        answer = self.read(timeout)
        return "timeout" if answer is None else answer


def make_model(folder: Path) -> bytes:
    import torch

    from vrtk.api import Coder
    from vrtk.data import synthetic_images
    from vrtk.model import load_model, save_model, wrap
    from vrtk.zoo import BaseSpec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    wrapped = wrap(BaseSpec(arch="bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}), [])
    with torch.no_grad():
        wrapped.net.g_a[-1].weight.mul_(40.0)
    wrapped.net.update(force=True)
    model = load_model(save_model(wrapped, folder))
    image = synthetic_images(1, height=40, width=56, seed=1)[0].float() / 255
    return Coder(model).compress(image).data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per decode before it counts as a hang")
    ap.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    os.environ.setdefault("VRTK_OFFLINE", "1")
    start = time.perf_counter()
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        valid = make_model(Path(tmp) / "model")
        model_dir = str(Path(tmp) / "model")
        w = Worker(model_dir, start_timeout=300)
        for i in range(args.mutations):
            kind, data = mutate(rng, valid)
            answer = w.ask(data, args.timeout)
            if answer in ("dead", "timeout"):
                outcome = "crashed" if answer == "dead" else "timed out"
                failures.append(f"#{i} {kind}: {outcome} (worker exit {w.proc.poll()}); file {data.hex()}")
                w.stop()
                w = Worker(model_dir, start_timeout=300)
            elif answer.startswith("crashed"):
                outcome = "crashed"
                failures.append(f"#{i} {kind}: {answer}; file {data.hex()}")
            else:
                outcome = answer
            counts[outcome] += 1
            by_kind[kind][outcome] += 1
        w.stop()
    elapsed = time.perf_counter() - start
    outcomes = ("rejected", "decoded", "crashed", "timed out")
    print(f"fuzz_bitstream: {args.mutations} mutations of a {len(valid)}-byte .vrtk file (seed {args.seed}, "
          f"timeout {args.timeout:g} s per decode)")
    print(f"{'mutation':<28}" + "".join(f"{o:>10}" for o in outcomes))
    for kind in KINDS:
        print(f"{kind:<28}" + "".join(f"{by_kind[kind][o]:>10}" for o in outcomes))
    print(f"{'total':<28}" + "".join(f"{counts[o]:>10}" for o in outcomes))
    print(f"rejected {counts['rejected']} / decoded {counts['decoded']} / crashed {counts['crashed']} / "
          f"timed out {counts['timed out']} in {elapsed:.1f} s")
    for line in failures[:20]:
        print("  " + line[:400])
    return 1 if counts["crashed"] or counts["timed out"] else 0


if __name__ == "__main__":
    sys.exit(main())
