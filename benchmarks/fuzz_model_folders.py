"""Fuzz what vrtk reads from others: crafted and mutated model folders, and hostile .vrtk files; count how each ends.

Every case runs in a worker subprocess with the canary set up: a package ``vrtk_fuzz_canary`` on its PYTHONPATH
and a ``test_canary.py`` in its working folder (what ``unittest.__main__`` would discover), both writing a marker
file when imported, and a watch on ``sys.modules`` for ``this`` and ``unittest.__main__``. A folder case loads
the folder (``vrtk.api.Coder``), compresses a small image and decodes it; a bitstream case decodes the file with a
tiny model. The worker runs with ``VRTK_MEMORY_BUDGET`` set to ``--budget``; each case's peak memory is measured.

    clean errors   a vrtk.errors.VrtkError (what the CLI prints as "vrtk: error: ...")
    decoded        the folder loaded and round-tripped an image / the file decoded to its header's size
    tracebacks     any other exception, a wrong decode, or a worker that died
    over-budget    peak memory above --budget, or no answer within --timeout (counted besides the outcome)
    code executed  the canary's marker appeared, or a watched module was imported

    python benchmarks/fuzz_model_folders.py --folders 300 --bitstreams 1000 --seed 0

Exit status 1 when anything ended in a traceback, ran code, or went over budget.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_bitstream import LineWorker  # noqa: E402
from fuzz_bitstream import mutate as mutate_bitstream  # noqa: E402

CANARY = "vrtk_fuzz_canary"
WATCHED = ("this", "unittest.__main__", CANARY, f"{CANARY}.__main__", "test_canary")
HOSTILE_VALUES = [5, -1, 0, 2**63, 10**30, 1e308, -1e-300, "x", "", "../../etc/passwd", "os:system", True, None, [],
                  {}, [1, 2], {"a": 1}, [None] * 3, "\u0000", "9" * 300, [[[[[[[[[[[[1]]]]]]]]]]]]]
OUTCOMES = ("clean errors", "decoded", "tracebacks")
FOLDER_KINDS = ("folder: code", "folder: json", "folder: fields", "folder: sizes", "folder: tensors",
                "folder: random")
BITSTREAM_KINDS = ("bitstream: mutated", "bitstream: bombs", "bitstream: options")


# -- the canary ----------------------------------------------------------------------------------------------------
def make_canary(root: Path) -> tuple[Path, Path, Path]:
    """(PYTHONPATH folder, working folder, marker file): importing the canary in any way writes the marker."""
    marker = root / "code-ran"
    body = (f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
            "from compressai.models import ScaleHyperprior\n\n\nclass X(ScaleHyperprior):\n    pass\n")
    package = root / "path" / CANARY
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    (package / "__main__.py").write_text(body)
    cwd = root / "cwd"
    cwd.mkdir()
    (cwd / "test_canary.py").write_text(body)
    return package.parent, cwd, marker


# -- model folders ---------------------------------------------------------------------------------------------------
def make_base(root: Path) -> tuple[Path, Path, bytes]:
    """A tiny bm model folder (for folder cases) and a tiny plain model folder plus a valid file (for bitstreams)."""
    import torch

    from vrtk.api import Coder
    from vrtk.data import synthetic_images
    from vrtk.model import load_model, save_model, wrap
    from vrtk.zoo import BaseSpec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bm = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}), ["bm"])
    bm.net.update(force=True)
    save_model(bm, root / "bm")
    torch.manual_seed(0)
    plain = wrap(BaseSpec("bmshj2018-hyperprior", weights="random", arch_kwargs={"N": 8, "M": 12}), [])
    with torch.no_grad():
        plain.net.g_a[-1].weight.mul_(40.0)
    plain.net.update(force=True)
    model = load_model(save_model(plain, root / "plain"))
    image = synthetic_images(1, height=40, width=56, seed=1)[0].float() / 255
    return root / "bm", root / "plain", Coder(model).compress(image).data


def code_cases() -> list[tuple[str, dict]]:
    archs = [f"{CANARY}:X", f"{CANARY}.__main__:X", "this:X", "unittest.__main__:X", "os:system",
             "subprocess:Popen", "builtins:eval", "importlib:import_module", "torch.nn:Linear",
             "compressai.models:ScaleHyperprior", "compressai.models.google:ScaleHyperprior", "no.such.module:X",
             f"{CANARY}:X.__init__", ":X", "this:", "bmshj2018-hyperprior"]
    cases = [("arch", {"arch": a}) for a in archs]
    cases.append(("arch", {"arch": "torch.nn:Linear", "arch_kwargs": {"in_features": 100000,
                                                                      "out_features": 100000}}))
    return cases


def json_cases(config: dict, rng: random.Random) -> list[bytes]:
    text = json.dumps(config)
    raw = [b"", b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16"), b'{"format": "vrtk-model\xff"}',
           b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[1, 2]", b'"vrtk"', b"null",
           b"3", text.replace('"format_version": 1', '"format_version": ' + "9" * 5000).encode(),
           text.replace('"format_version": 1', '"format_version": NaN').encode(),
           text.replace('"format_version": 1', '"format_version": Infinity').encode(),
           text.replace('"format": "vrtk-model"', '"format": "vrtk-model", "format": "x"').encode()]
    raw += [text.encode()[:rng.randrange(len(text))] for _ in range(6)]
    return raw


def paths_of(value, prefix=()) -> list[tuple]:
    """Every path (tuple of keys / indexes) inside a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, prefix + (i,))
    return out


def set_path(config, path: tuple, value):
    if not path:
        return value
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return config


def delete_path(config, path: tuple):
    target = config
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return config


def field_cases(config: dict) -> list[dict]:
    """Each field of the config removed, and set to each of a few hostile values."""
    out = []
    for path in paths_of(config):
        if not path:
            continue
        out.append(delete_path(json.loads(json.dumps(config)), path))
        for value in (5, "x", None, [], {}, -1, [[[[1]]]]):
            out.append(set_path(json.loads(json.dumps(config)), path, value))
    return out


def size_cases(config: dict) -> list[dict]:
    def with_base(**kw):
        c = json.loads(json.dumps(config))
        c["base"].update(kw)
        return c

    def with_bm(**kw):
        c = json.loads(json.dumps(config))
        c["plugins"][0]["config"].update(kw)
        return c

    def with_rate(lambdas):
        c = json.loads(json.dumps(config))
        c["rate"]["lambdas"] = lambdas
        return c

    out = [with_base(arch_kwargs=k) for k in ({"N": 100_000, "M": 12}, {"N": 8, "M": 10**9}, {"N": -8, "M": 12},
                                              {"N": "8", "M": 12}, {"N": 8.5, "M": 12}, [8, 12], {"N": 0, "M": 0},
                                              {"N": 1024, "M": 1024}, {"N": 8, "M": 12, "bogus": 1})]
    out += [with_base(quality=q) for q in (0, 99, -1, "3", 2.5)]
    out += [with_bm(hidden=h) for h in (10**7, 0, -50, 4096, "50", 50.5)]
    out += [with_bm(channels=c) for c in (10**6, 0, 13)]
    out += [with_bm(lambdas=v) for v in (["x"], [-1, 0], [], [1e300], [0.01] * 5000, [0.01], [0.01, 0.01])]
    out += [with_rate(v) for v in (["x"], [-1, 0], [1e300], [0.01] * 5000, "0.01", [[0.01]])]
    return out


def tensor_cases(folder: Path) -> list[tuple[str, object]]:
    """(label, change): a change is a function of the state dict, or bytes for the whole weights file."""
    import torch

    def weight(state):
        return next(k for k in state if k.endswith("g_a.0.0.weight"))

    changes = [
        ("NaN weight", lambda s: s[weight(s)].fill_(float("nan"))),
        ("inf weight", lambda s: s[weight(s)].fill_(float("inf"))),
        ("NaN quantiles", lambda s: s["entropy_bottleneck.quantiles"].fill_(float("nan"))),
        ("huge quantiles", lambda s: s["entropy_bottleneck.quantiles"].mul_(1e7)),
        ("wide quantiles", lambda s: s["entropy_bottleneck.quantiles"].mul_(500.0)),
        ("unordered quantiles", lambda s: s["entropy_bottleneck.quantiles"].mul_(-1)),
        ("wrong shape", lambda s: s.update({weight(s): torch.zeros(8, 3, 3, 3)})),
        ("wrong dtype", lambda s: s.update({weight(s): s[weight(s)].to(torch.int32)})),
        ("extra tensor", lambda s: s.update(extra=torch.zeros(3))),
        ("missing tensor", lambda s: s.pop(weight(s))),
        ("huge cdf table", lambda s: s.update({"entropy_bottleneck._quantized_cdf": torch.zeros(8, 10**6,
                                                                                                dtype=torch.int32)})),
        ("huge scale table", lambda s: s.update({"gaussian_conditional.scale_table": torch.full((10**5,), 1e9)})),
    ]
    data = (folder / "model.safetensors").read_bytes()
    changes += [("empty file", b""), ("garbage", bytes(1000)), ("truncated", data[:len(data) // 2]),
                ("huge header length", struct.pack("<Q", 2**62) + data[8:]),
                ("pickle payload", b"\x80\x02c" + CANARY.encode() + b"\nX\nq\x00)\x81q\x01.")]
    return changes


def random_config(config: dict, rng: random.Random) -> dict:
    """1-3 random fields replaced by hostile values, deleted, or filled with random nesting."""
    config = json.loads(json.dumps(config))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in paths_of(config) if p]
        path = rng.choice(paths)
        choice = rng.random()
        if choice < 0.2:
            delete_path(config, path)
        elif choice < 0.3:
            set_path(config, path, _nested(rng.randint(1, 200)))
        else:
            set_path(config, path, json.loads(json.dumps(rng.choice(HOSTILE_VALUES))))  # a copy: no shared lists
    return config


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def write_folder(root: Path, base: Path, n: int, config=None, raw: bytes | None = None, weights=None,
                 arch=None) -> Path:
    """A copy of ``base`` with its config and/or weights replaced."""
    from safetensors.torch import load_file, save_file

    folder = root / f"case{n:05d}"
    shutil.copytree(base, folder)
    if arch is not None:
        config = json.loads((base / "config.json").read_text())
        config["base"].update(arch)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, allow_nan=True))
    if raw is not None:
        (folder / "config.json").write_bytes(raw)
    if isinstance(weights, bytes):
        (folder / "model.safetensors").write_bytes(weights)
    elif weights is not None:
        state = load_file(str(folder / "model.safetensors"))
        weights(state)
        save_file(state, str(folder / "model.safetensors"))
    return folder


def folder_cases(root: Path, base: Path, count: int, rng: random.Random):
    """(kind, folder) for every crafted case, then ``count`` random mutations."""
    config = json.loads((base / "config.json").read_text())
    n = 0

    def next_n():
        nonlocal n
        n += 1
        return n

    for _, arch in code_cases():
        yield "folder: code", write_folder(root, base, next_n(), arch=arch)
    for raw in json_cases(config, rng):
        yield "folder: json", write_folder(root, base, next_n(), raw=raw)
    for changed in field_cases(config):
        yield "folder: fields", write_folder(root, base, next_n(), config=changed)
    for changed in size_cases(config):
        yield "folder: sizes", write_folder(root, base, next_n(), config=changed)
    for _, change in tensor_cases(base):
        yield "folder: tensors", write_folder(root, base, next_n(), weights=change)
    for _ in range(count):
        yield "folder: random", write_folder(root, base, next_n(), config=random_config(config, rng))


# -- bitstreams --------------------------------------------------------------------------------------------------------
def container_bytes(valid: bytes, options_raw: bytes | None = None, size=None, strings=None) -> bytes:
    from vrtk.container import Container, parse

    h = parse(valid)
    if options_raw is not None:  # raw options bytes, written around the normal writer's checks
        at = 63
        (old,) = struct.unpack_from(">H", valid, at)
        body = valid[:at] + struct.pack(">H", len(options_raw)) + options_raw + valid[at + 2 + old:-4]
        body = body[:6] + struct.pack(">Q", len(body) + 4) + body[14:]
        return body + struct.pack(">I", zlib.crc32(body))
    width, height = size
    shape = tuple(min(-(-d // 64), 2**32 - 1) for d in (height, width))
    return Container(fingerprint=h.fingerprint, lmbda=h.lmbda, width=width, height=height, mode="RGB", shape=shape,
                     strings=strings or h.strings).to_bytes()


def bitstream_cases(valid: bytes, count: int, rng: random.Random):
    for _ in range(count):
        yield "bitstream: mutated", mutate_bitstream(rng, valid)[1]
    for size in ((4096, 4096), (8000, 8000), (1, 64_000_000), (64_000_000, 1), (8000, 7999), (3000, 2000)):
        for payload in (0, 64, 20_000, 400_000):
            strings = [[rng.randbytes(payload // 10 + 8)], [rng.randbytes(payload + 8)]]
            yield "bitstream: bombs", container_bytes(valid, size=size, strings=strings)
    options = [b"[" * 2000 + b"]" * 2000, b'{"a":' * 800 + b"1" + b"}" * 800, b'{"ecg.scale": NaN}',
               b'{"ecg.scale": 1e999}', b'{"ecg.scale": ' + b"9" * 4050 + b"}", b'{"ecg.scale": "x"}',
               b'{"ecg.tile": 0}', b"\xff\xfe", b"[1]", b'{"a": [[[[[1]]]]]}']
    for raw in options:
        yield "bitstream: options", container_bytes(valid, options_raw=raw)
    for _ in range(20):
        yield "bitstream: options", container_bytes(valid, options_raw=json.dumps(
            {rng.choice(["ecg.scale", "ecg.sparse", "ecg.tile", "x"]): rng.choice(HOSTILE_VALUES)}).encode())


# -- the worker --------------------------------------------------------------------------------------------------------
def worker(plain_dir: str, marker: str) -> None:
    import torch

    from vrtk.api import Coder
    from vrtk.container import parse
    from vrtk.errors import VrtkError
    from vrtk.model import load_model

    torch.set_num_threads(1)
    plain = load_model(plain_dir)
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    before = {m for m in WATCHED if m in sys.modules}
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        _reset_peak()
        rss = _status("VmRSS:")
        try:
            if request["op"] == "folder":
                coder = Coder(request["path"], allow_code=request.get("allow_code", False))
                data = coder.compress(image).data
                ok = tuple(coder.decode(data).tensor.shape) == (3, 40, 56)
            else:
                data = bytes.fromhex(request["hex"])
                decoded = Coder(plain).decode(data)
                h = parse(data)
                ok = (tuple(decoded.tensor.shape) == (3, h.height, h.width)
                      and bool(torch.isfinite(decoded.tensor).all()))
            answer = {"outcome": "decoded" if ok else "tracebacks", "error": "" if ok else "wrong decode"}
        except VrtkError as exc:
            answer = {"outcome": "clean errors", "error": str(exc)[:200]}
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            answer = {"outcome": "tracebacks", "error": f"{type(exc).__name__}: {exc}"[:300]}
        answer["peak"] = max(0, _status("VmHWM:") - rss)
        answer["code"] = os.path.exists(marker) or bool({m for m in WATCHED if m in sys.modules} - before)
        print(json.dumps(answer), flush=True)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS
    except OSError:
        pass


def _status(field: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))
    except (OSError, StopIteration):
        return 0


class Worker(LineWorker):
    def __init__(self, plain_dir: Path, canary_path: Path, cwd: Path, marker: Path, budget: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1", VRTK_OFFLINE="1", VRTK_MEMORY_BUDGET=budget,
                   PYTHONPATH=os.pathsep.join([str(canary_path), os.environ.get("PYTHONPATH", "")]))
        super().__init__([str(Path(__file__).resolve()), "--worker", str(plain_dir), str(marker)], env, 300,
                         cwd=cwd)

    def ask(self, request: dict, timeout: float) -> dict:
        if not self.send(json.dumps(request)):
            return {"outcome": "tracebacks", "error": "worker died", "dead": True}
        answer = self.read(timeout)
        if answer is None:
            return {"outcome": "clean errors", "error": "timeout", "timeout": True}
        if answer == "dead":
            return {"outcome": "tracebacks", "error": f"worker died (exit {self.proc.poll()})", "dead": True}
        return json.loads(answer)


def check_detector(w: Worker, folder: Path, timeout: float, marker: Path) -> str:
    """Load a folder naming the canary *with* allow_code: the detector must see code run (else it proves nothing).
    Stops the worker, which has imported the canary by then."""
    answer = w.ask({"op": "folder", "path": str(folder), "allow_code": True}, timeout)
    w.stop()
    if not answer.get("code"):
        raise SystemExit(f"the code-execution detector missed the canary: {answer}")
    marker.unlink()
    shutil.rmtree(folder)
    return "code execution detected, as it must be"


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", type=int, default=300, help="random config mutations (besides the crafted ones)")
    ap.add_argument("--bitstreams", type=int, default=1000, help="random .vrtk mutations (besides bombs, options)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as over budget")
    ap.add_argument("--budget", default="2G", help="VRTK_MEMORY_BUDGET for the worker; a case above it is over budget")
    ap.add_argument("--worker", nargs=2, metavar=("PLAIN_DIR", "MARKER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    os.environ.setdefault("VRTK_OFFLINE", "1")
    from vrtk.limits import parse_size

    budget = parse_size(args.budget)
    start = time.perf_counter()
    rng = random.Random(args.seed)
    table: dict[str, Counter] = {k: Counter() for k in FOLDER_KINDS + BITSTREAM_KINDS}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        canary_path, cwd, marker = make_canary(root / "canary")
        bm_dir, plain_dir, valid = make_base(root / "base")
        cases = root / "cases"
        cases.mkdir()
        canary_folder = write_folder(cases, bm_dir, 0, arch={"arch": f"{CANARY}:X"})
        control = check_detector(Worker(plain_dir, canary_path, cwd, marker, args.budget), canary_folder,
                                 args.timeout, marker)
        w = Worker(plain_dir, canary_path, cwd, marker, args.budget)
        requests = [(k, {"op": "folder", "path": str(f)}) for k, f in folder_cases(cases, bm_dir, args.folders, rng)]
        requests += [(k, {"op": "bitstream", "hex": d.hex()}) for k, d in bitstream_cases(valid, args.bitstreams,
                                                                                             rng)]
        for i, (kind, request) in enumerate(requests):
            answer = w.ask(request, args.timeout)
            row = table[kind]
            row["cases"] += 1
            row[answer["outcome"]] += 1
            over = answer.get("timeout") or answer.get("peak", 0) > budget
            row["over-budget"] += bool(over)
            row["code executed"] += bool(answer.get("code"))
            if answer["outcome"] == "tracebacks" or over or answer.get("code"):
                what = request.get("path") or f"{len(request['hex']) // 2}-byte file"
                failures.append(f"#{i} {kind}: {answer['outcome']}, peak {answer.get('peak', 0) / 2**20:.0f} MiB, "
                                f"code {bool(answer.get('code'))}: {answer['error']} ({what})")
            if answer.get("dead") or answer.get("timeout") or answer.get("code"):
                w.stop()
                if marker.exists():
                    marker.unlink()
                w = Worker(plain_dir, canary_path, cwd, marker, args.budget)
            if request["op"] == "folder":
                shutil.rmtree(request["path"], ignore_errors=True)
        w.stop()
    elapsed = time.perf_counter() - start
    print_table(args, table, elapsed, failures, control)
    bad = sum(r["tracebacks"] + r["over-budget"] + r["code executed"] for r in table.values())
    return 1 if bad else 0


def print_table(args, table: dict[str, Counter], elapsed: float, failures: list[str], control: str) -> None:
    columns = ("cases",) + OUTCOMES + ("over-budget", "code executed")
    print(f"fuzz_model_folders: seed {args.seed}, worker VRTK_MEMORY_BUDGET={args.budget}, timeout "
          f"{args.timeout:g} s per case")
    print(f"canary control (a folder naming the canary, loaded with allow_code=True): {control}")
    print(f"{'category':<22}" + "".join(f"{c:>15}" for c in columns))
    total: Counter = Counter()
    for kind, row in table.items():
        total.update(row)
        print(f"{kind:<22}" + "".join(f"{row[c]:>15}" for c in columns))
    print(f"{'total':<22}" + "".join(f"{total[c]:>15}" for c in columns))
    print(f"{total['cases']} cases in {elapsed:.1f} s: tracebacks {total['tracebacks']}, over-budget "
          f"{total['over-budget']}, code executed {total['code executed']}")
    for line in failures[:30]:
        print("  " + line[:400])


if __name__ == "__main__":
    sys.exit(main())
