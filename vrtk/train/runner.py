"""The training loop behind every recipe: R + lambda * D + plugin loss terms, resumable bit for bit.

Run directory::

    config.yaml      the resolved RunConfig          environment.txt  pip freeze, git revision, torch version
    metrics.jsonl    one record per log interval     last.pt          resume state (atomic)
    model/           the trained vrtk model folder (for per-lambda runs: lambda-<value>/model/)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from vrtk.data import CropSampler, synthetic_images
from vrtk.device import pick_device
from vrtk.errors import RecipeError, TrainingError
from vrtk.fileio import write_text_atomic, write_with_atomic
from vrtk.folder_check import check_folder_code
from vrtk.model import WrappedModel, extend, load_model, model_folder, save_model, trainable_setup, wrap
from vrtk.plugin_manager import get_registry
from vrtk.rate import use_rate
from vrtk.train.distill import Teacher
from vrtk.train.quantization import check_mixed_supported, check_quantization, training_quantization
from vrtk.train.recipe import RunConfig, default_out_dir
from vrtk.zoo import COMPRESSAI_MSE_LAMBDAS, COMPRESSAI_MSSSIM_LAMBDAS, BaseSpec

RESUME_NAME = "last.pt"
PRECISIONS = ("fp32", "tf32", "bf16-autocast")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise RecipeError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def configure_precision(precision: str, device: torch.device) -> bool:
    """Set how float32 convolutions and matmuls run on a CUDA ``device``; True when the step should autocast.

    fp32: IEEE float32 (TF32 off, also for cuDNN convolutions, where PyTorch allows it by default). tf32: TF32
    tensor cores for convolutions and matmuls, and cuDNN's autotuner (crops have one shape). bf16-autocast: as
    tf32, and the transforms run under bfloat16 autocast while CompressAI's entropy models, the likelihoods and
    the loss stay float32 (``bf16_autocast``). On a CPU only bf16-autocast changes anything.
    """
    check_precision(precision)
    if device.type == "cuda":
        fast = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
    return precision == "bf16-autocast"


@contextlib.contextmanager
def bf16_autocast(net: torch.nn.Module, device_type: str):
    """bfloat16 autocast for ``net``'s transforms, with its entropy models run outside autocast on float32 inputs:
    likelihoods are floored at 1e-9 and summed as logs into the rate, where bfloat16's 8-bit mantissa would show."""
    from compressai.entropy_models import EntropyModel

    models = [m for m in net.modules() if isinstance(m, EntropyModel)]
    previous = [m.__dict__.get("forward") for m in models]  # an instance-level forward of someone else's
    for module in models:
        module.forward = _in_fp32(module.forward, device_type)
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        for module, forward in zip(models, previous, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _in_fp32(forward, device_type: str):
    def run(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return forward(*map(_to_fp32, args), **{k: _to_fp32(v) for k, v in kwargs.items()})

    return run


def _to_fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def lambdas_for(config: RunConfig) -> list[float]:
    if config.lambdas:
        return [float(x) for x in config.lambdas]
    if config.quality is None:
        raise RecipeError("set `lambdas` or `quality`")
    table = COMPRESSAI_MSSSIM_LAMBDAS if config.distortion == "ms-ssim" else COMPRESSAI_MSE_LAMBDAS
    return [table[int(config.quality) - 1]]


def plugin_configs_for(config: RunConfig, lambdas: list[float], registry) -> dict:
    """Rate plugins take the run's lambdas unless the recipe set theirs (convention: a ``lambdas`` config field)."""
    configs = {k: dict(v or {}) for k, v in (config.plugin_config or {}).items()}
    for name in config.plugins:
        fields = getattr(registry.injector(name).config_class, "__dataclass_fields__", {})
        if "lambdas" in fields and "lambdas" not in configs.get(name, {}):
            configs.setdefault(name, {})["lambdas"] = list(lambdas)
    return configs


TRUSTED_CODE_ROOTS = ("vrtk", "vrtk_plugins", "torch", "timm", "compressai")


def check_code_reference(config: RunConfig, allow_code: bool, registry) -> None:
    """A recipe may name classes from vrtk, installed plugins, torch, timm or compressai; other code needs a flag."""
    if model_folder(config.model) is not None:  # a folder's own class needs the flag too (vrtk/folder_check.py)
        return check_folder_code(model_folder(config.model), allow_code)
    if ":" not in config.model or allow_code:
        return
    root = config.model.split(":", 1)[0].split(".")[0]
    plugin_roots = {type(i).__module__.split(".")[0] for i in registry.injectors.values()}
    if root not in TRUSTED_CODE_ROOTS and root not in plugin_roots:
        raise RecipeError(f"the recipe names code from {root!r} ({config.model}); only vrtk, its plugins, torch, "
                          "timm and compressai are imported from recipes unless you pass --allow-code")


def build_for_training(config: RunConfig, lambdas: list[float], with_plugins: bool = True) -> WrappedModel:
    """The model a run trains; ``with_plugins=False``: the model it starts from, without this run's plugins (the
    distillation teacher)."""
    registry = get_registry()
    plugin_config = plugin_configs_for(config, lambdas, registry)
    folder = model_folder(config.model)
    if folder is not None:
        wrapped = load_model(folder, registry=registry, allow_code=True)  # run_recipe's check_code_reference gated it
        if not with_plugins:
            return wrapped
        wrapped = extend(wrapped, [p for p in config.plugins if p not in [u.name for u in wrapped.plugins]],
                         plugin_config, registry=registry)
    else:
        spec = BaseSpec(arch=config.model, quality=config.quality, metric=config.metric,
                        weights=config.weights, arch_kwargs=dict(config.arch_kwargs))
        if not with_plugins:
            return wrap(spec, [], registry=registry)
        wrapped = wrap(spec, list(config.plugins), plugin_config, registry=registry)
    trainable_setup(wrapped, config.train)
    return wrapped


def environment_report() -> str:
    lines = [f"python {sys.version.split()[0]}", f"torch {torch.__version__}"]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip()
        lines.append(f"git {rev or 'unknown'}")
    except (OSError, subprocess.SubprocessError):
        lines.append("git unknown")
    try:
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                                timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        freeze = "(pip freeze unavailable)\n"
    return "\n".join(lines) + "\n\n" + freeze


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


class Trainer:
    """One training run at one lambda set. ``run()`` trains to ``config.steps`` and saves the model."""

    def __init__(self, config: RunConfig, out_dir: Path, lambdas: list[float], resume: bool, progress: bool = True):
        self.config, self.out, self.lambdas, self.progress = config, out_dir, lambdas, progress
        self.device = pick_device(config.device)
        self.autocast = configure_precision(config.precision, self.device)
        self.dist = init_distributed(self.device)
        torch.manual_seed(config.seed)
        self.wrapped = build_for_training(config, lambdas)
        self.wrapped.lambdas = sorted(lambdas)
        self.wrapped.metric = config.distortion
        self.net = self.wrapped.net.to(self.device).train()
        if config.quantization == "mixed":
            check_mixed_supported(self.net)
        self.registry = get_registry()
        self.forward_net = self._maybe_ddp(self.net)
        self.sampler = self._make_sampler()
        self.gen = torch.Generator()
        self.optimizer, self.aux_optimizer = self._make_optimizers()
        self.scheduler = self._make_scheduler()
        self.ema = self._make_ema()
        self.teacher = self._make_teacher() if config.distill or config.distill_latent else None
        from compressai.losses import RateDistortionLoss

        self.criterion = RateDistortionLoss(lmbda=lambdas[0], metric=config.distortion)
        self.step = 0
        if resume and (out_dir / RESUME_NAME).is_file():
            self._load_resume(out_dir / RESUME_NAME)

    # -- setup -------------------------------------------------------------------------------------------
    def _maybe_ddp(self, net):
        if self.dist.world <= 1:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)

    def _make_sampler(self) -> CropSampler:
        cfg = self.config
        if cfg.synthetic:
            size = max(cfg.crop * 2, 96)
            return CropSampler(synthetic_images(cfg.synthetic, size, size, seed=cfg.seed), cfg.crop)
        return CropSampler.from_folders(cfg.data, cfg.crop, tuple(cfg.downscales))

    def _make_optimizers(self):
        from timm.optim import create_optimizer_v2

        main = [p for n, p in self.net.named_parameters() if p.requires_grad and not n.endswith("quantiles")]
        aux = [p for n, p in self.net.named_parameters() if n.endswith("quantiles")]
        if not main:
            raise TrainingError("nothing to train: no parameter requires a gradient")
        opt = create_optimizer_v2(main, opt=self.config.opt, lr=self.config.lr,
                                  weight_decay=self.config.weight_decay)
        aux_opt = torch.optim.Adam(aux, lr=self.config.aux_lr) if aux else None
        for p in aux:
            p.requires_grad_(True)
        return opt, aux_opt

    def _make_scheduler(self):
        from timm.scheduler import create_scheduler_v2

        cfg = self.config
        if cfg.sched in ("constant", "none") and not cfg.warmup_steps:
            return None
        try:
            sched, _ = create_scheduler_v2(
                self.optimizer, sched=cfg.sched, num_epochs=cfg.steps, min_lr=cfg.min_lr,
                warmup_epochs=cfg.warmup_steps, warmup_lr=cfg.lr / 10, decay_epochs=cfg.decay_fraction,
                step_on_epochs=False, updates_per_epoch=1)
        except ValueError as exc:  # e.g. wsd over so few steps that its decay phase has none
            raise RecipeError(f"sched={cfg.sched} cannot run with steps={cfg.steps}, warmup_steps={cfg.warmup_steps}, "
                              f"decay_fraction={cfg.decay_fraction}: {exc}") from None
        return sched

    def _make_teacher(self) -> Teacher:
        """The starting model, built under the run's seed as the student was (same weights when they are random),
        without touching the generator the run goes on with."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            start = build_for_training(cfg, self.lambdas, with_plugins=False)
        return Teacher(start, self.registry, self.device, cfg.distill, cfg.distill_latent)

    def _make_ema(self):
        if not self.config.ema:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.net, decay=self.config.ema)

    # -- resume ------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        state = {"step": self.step, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if self.aux_optimizer is not None:
            state["aux_optimizer"] = self.aux_optimizer.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def save_resume(self) -> None:
        if self.dist.main:
            state = self._state()
            write_with_atomic(self.out / RESUME_NAME, lambda tmp: torch.save(state, tmp))

    def _load_resume(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise TrainingError(f"{path}: cannot resume from this checkpoint ({exc})") from None
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.aux_optimizer is not None and "aux_optimizer" in state:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = int(state["step"])

    # -- one step ----------------------------------------------------------------------------------------
    def _pick_lambdas(self) -> list[float]:
        if len(self.lambdas) == 1 or self.config.lambda_mode == "sum":
            return list(self.lambdas)
        idx = int(torch.randint(0, len(self.lambdas), (1,), generator=self.gen))
        return [self.lambdas[idx]]

    def _seed_step(self) -> None:
        """Batches and lambdas depend only on (seed, rank, step): resume and DDP need no generator state."""
        self.gen.manual_seed(hash((self.config.seed, self.dist.rank, self.step)) & 0x7FFF_FFFF_FFFF_FFFF)

    def _watched(self, seen: dict):
        return self.teacher.watching(self.net, seen) if self.teacher is not None else contextlib.nullcontext()

    def _precision(self):
        return bf16_autocast(self.net, self.device.type) if self.autocast else contextlib.nullcontext()

    def train_step(self) -> dict:
        self._seed_step()
        x = self.sampler.sample(self.config.batch, self.gen).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        record: dict = {}
        for lmbda in self._pick_lambdas():
            seen: dict = {}
            with use_rate(self.net, lmbda, self.registry), training_quantization(self.net, self.config.quantization), \
                    self._precision(), self._watched(seen):
                out = self.forward_net(x)
            if self.autocast:  # the distortion in float32, against the float32 input
                out = {**out, "x_hat": out["x_hat"].float()}
            self.criterion.lmbda = lmbda
            rd = self.criterion(out, x)
            loss = rd["loss"]
            for plugin, terms in self.registry.call("vrtk_loss_terms", model=self.net, step=self.step):
                for name, value in terms.items():
                    loss = loss + value
                    record[f"loss/{plugin}/{name}"] = float(value.detach())
            if self.teacher is not None:
                for name, value in self.teacher.terms(x, out["x_hat"], seen, lmbda).items():
                    loss = loss + value
                    record[f"loss/{name}"] = float(value.detach())
            total = total + loss
            record.update(lmbda=lmbda, bpp=float(rd["bpp_loss"].detach()))
            if "mse_loss" in rd:
                mse = float(rd["mse_loss"].detach())
                record["psnr"] = 10 * math.log10(1.0 / max(mse, 1e-12))
            else:
                record["ms_ssim"] = float(rd["ms_ssim_loss"].detach())
        if not torch.isfinite(total):
            raise TrainingError(f"loss is {float(total.detach())} at step {self.step}; stopped. The last good "
                                f"checkpoint ({self.out / RESUME_NAME}) is kept; try a lower lr or clip.")
        total.backward()
        if self.config.clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.clip)
        self.optimizer.step()
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux = self.net.aux_loss()
            aux.backward()
            self._sync_aux_grads()
            self.aux_optimizer.step()
            record["aux"] = float(aux.detach())
        if self.ema is not None:
            self.ema.update(self.net, step=self.step)
        self.step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.step)
        record.update(step=self.step, loss=float(total.detach()), lr=self.optimizer.param_groups[0]["lr"],
                      world_size=self.dist.world)
        for _, stats in self.registry.call("vrtk_layer_stats", model=self.net):
            record.update(stats)
        return record

    def _sync_aux_grads(self) -> None:
        if self.dist.world <= 1:
            return
        import torch.distributed as dist

        for group in self.aux_optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dist.world

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.config
        if self.scheduler is not None:
            self.scheduler.step_update(self.step)
        bar = None
        if self.progress and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.out.name, dynamic_ncols=True, file=sys.stderr)
        log = open(self.out / "metrics.jsonl", "a") if self.dist.main else None
        started = time.monotonic()
        try:
            while self.step < cfg.steps:
                record = self.train_step()
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record["elapsed_s"] = round(time.monotonic() - started, 2)
                    if cfg.val_every and self.step % cfg.val_every == 0:
                        record.update(self.validate())
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if bar is not None:
                        bar.set_postfix(_postfix(record))
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save_resume()
        finally:
            if bar is not None:
                bar.close()
            if log:
                log.close()
        return self.finish()

    @torch.no_grad()
    def validate(self) -> dict:
        """Likelihood bpp and PSNR on a few full validation images (padded), at each trained lambda."""
        if not self.config.val_data:
            return {}
        from vrtk.codec import estimate_rd
        from vrtk.images import list_images, load_image

        images = [load_image(p).tensor for p in list_images(self.config.val_data)[: self.config.val_images]]
        self.net.eval()
        out = {}
        for lmbda in self.lambdas:
            bpp, psnr = estimate_rd(self.net, images, lmbda, self.registry, self.device)
            out[f"val/bpp@{lmbda:g}"], out[f"val/psnr@{lmbda:g}"] = bpp, psnr
        self.net.train()
        return out

    def finish(self) -> Path:
        model_dir = self.out / "model"
        if self.dist.main:
            net = self.ema.module if self.ema is not None else self.net
            if net is not self.net:
                self.net.load_state_dict(net.state_dict())
            self.net.eval()
            self.net.update(force=True)
            self.wrapped.extra["training"] = {"recipe": self.config.recipe, "profile": self.config.profile,
                                              "steps": self.step, "lambdas": self.lambdas,
                                              "quantization": self.config.quantization}
            save_model(self.wrapped, model_dir)
        return model_dir


def _postfix(record: dict) -> dict:
    keys = ("loss", "bpp", "psnr", "lmbda")
    out = {k: f"{record[k]:.4g}" for k in keys if k in record}
    sparsity = [v for k, v in record.items() if k.endswith("/sparsity")]
    if sparsity:
        out["sparsity"] = f"{sum(sparsity) / len(sparsity):.2f}"
    return out


def prepare_run_dir(config: RunConfig, resume: bool) -> Path:
    out = Path(config.out or default_out_dir(config))
    if out.exists() and any(out.iterdir()) and not resume:
        raise RecipeError(f"run directory {out} already exists; pass --resume to continue it, or out=NEW_DIR")
    if resume and not (out / "config.yaml").is_file():
        raise RecipeError(f"--resume: {out} holds no run to continue")
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        saved = yaml.safe_load((out / "config.yaml").read_text())
        mine = {**config.to_dict(), "out": str(out)}
        defaults = RunConfig().to_dict()  # a key newer than the run's config.yaml had its default there
        changed = sorted(k for k in mine if saved.get(k, defaults.get(k)) != mine[k] and k not in ("steps", "out"))
        if changed:
            raise RecipeError(f"--resume with settings that differ from the run's config.yaml: {changed}")
    else:
        write_text_atomic(out / "config.yaml", yaml.safe_dump({**config.to_dict(), "out": str(out)},
                                                              sort_keys=False))
        write_text_atomic(out / "environment.txt", environment_report())
    return out


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_recipe(config: RunConfig, resume: bool = False, progress: bool = True, allow_code: bool = False) -> list[Path]:
    """Run a resolved recipe; returns the model folders it produced."""
    check_code_reference(config, allow_code, get_registry())
    check_precision(config.precision)  # before the run directory is made
    check_quantization(config.quantization)
    if config.threads:
        torch.set_num_threads(config.threads)
    dist_info = init_distributed(pick_device(config.device))
    try:
        return _run_stages(config, dist_info, resume, progress)
    finally:
        _close_distributed(dist_info)


def _close_distributed(dist_info: DistInfo) -> None:
    """Tear the process group down before exit: a gloo group left alive aborts the interpreter at exit now and
    then ("terminate called without an active exception"), failing a run that finished."""
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():  # no barrier: after a failure on one rank it would wait forever
            dist.destroy_process_group()


def _run_stages(config: RunConfig, dist_info: DistInfo, resume: bool, progress: bool) -> list[Path]:
    if dist_info.main:
        out = prepare_run_dir(config, resume)
    _barrier(dist_info)
    if not dist_info.main:
        out = Path(config.out or default_out_dir(config))
    lambdas = lambdas_for(config)
    if not config.per_lambda:
        produced = [Trainer(config, out, lambdas, resume, progress).run()]
        return produced if dist_info.main else []
    results = []
    for lmbda in lambdas:
        sub = out / f"lambda-{lmbda:g}"
        sub.mkdir(exist_ok=True)
        _barrier(dist_info)
        if (sub / "model" / "config.json").is_file():
            results.append(sub / "model")
            continue
        results.append(Trainer(config, sub, [lmbda], resume=True, progress=progress).run())
        _barrier(dist_info)
    return results if dist_info.main else []
