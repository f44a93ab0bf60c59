"""Settings of the ECG plugin (energy-based channel gating, Yin et al.), one dataclass saved with the model."""

from __future__ import annotations

from dataclasses import dataclass, field

from vrtk.errors import PluginError

ESTIMATORS = ("ste", "soft")
CHANNEL = -1  # gate_tile value: one decision per (image, channel)
INIT_SCOPES = ("channel", "layer")


@dataclass
class EcgConfig:
    """What to gate, how the gate trains, and how sparse it should become.

    Placement: ``targets=None`` gates every Conv2d/ConvTranspose2d of g_a, g_s, h_a, h_s except the convolutions
    that read each sub-network's input (the "first layer"); ``targets``/``exclude`` are exact module names or
    full regexes and replace that default.

    Thresholds: th = omega * alpha (paper), or th = omega * alpha * mean(x^2) with ``energy_relative`` (our
    deviation: a threshold the network cannot escape by growing its activations). ``alpha`` starts at
    ``alpha_init``; with ``init_sparsity`` it is instead set from the first training batch (like Glow's ActNorm)
    so that this fraction of each channel's (``init_scope=channel``) or the layer's (``layer``) inputs is zeroed.

    Granularity: ``gate_tile=0`` decides per element (paper). ``gate_tile=T`` compares the mean energy of each
    T x T tile of a channel with the threshold instead (our deviation): element-wise zeros save FLOPs but no CPU
    time, whole (tile, channel) blocks let the sparse inference path skip work (see sparse.py and the README).
    ``gate_tile=-1`` (``CHANNEL``) decides per channel and image: a channel whose mean energy GAP(x^2) is below
    its threshold is dropped whole, and the sparse path runs one convolution on the surviving channels.

    Losses: gamma * sum ||alpha - alpha_t||^2 (paper, gamma = alpha_t = 1e-4), plus, when ``sparsity_target``
    is set, ``sparsity_weight`` * sum over layers of max(0, target - sparsity)^2, where the sparsity is the
    measured (hard) zero fraction with the gradient of the soft mask; the target rises linearly from
    ``init_sparsity`` (or 0) to ``sparsity_target`` over ``sparsity_ramp`` steps.
    """

    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    estimator: str = "ste"  # ste: hard forward, sigmoid(eps*z) gradient; soft: sigmoid(eps*z) mask in training
    eps: float = 10.0
    eps_relative: bool = True  # z / mean(x^2) (no gradient) inside the sigmoid: one eps suits every layer
    energy_relative: bool = False
    alpha_init: float = 1e-4
    init_sparsity: float | None = None
    init_scope: str = "channel"
    alpha_t: float = 1e-4
    gamma: float = 1e-4
    sparsity_target: float = 0.0  # 0 = no sparsity penalty (the paper's loss only)
    sparsity_weight: float = 1.0
    sparsity_ramp: int = 0
    gate_tile: int = 0  # 0: element-wise (paper); T > 0: per channel and T x T tile; -1: per channel (deviations)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise PluginError(f"ecg: estimator must be one of {ESTIMATORS}, not {self.estimator!r}")
        if self.init_scope not in INIT_SCOPES:
            raise PluginError(f"ecg: init_scope must be one of {INIT_SCOPES}, not {self.init_scope!r}")
        if self.init_sparsity is not None and not 0.0 <= float(self.init_sparsity) < 1.0:
            raise PluginError(f"ecg: init_sparsity must be in [0, 1), not {self.init_sparsity}")
        if not 0.0 <= float(self.sparsity_target) < 1.0:
            raise PluginError(f"ecg: sparsity_target must be in [0, 1), not {self.sparsity_target}")
        if int(self.gate_tile) < CHANNEL:
            raise PluginError(f"ecg: gate_tile must be 0 (element-wise), a tile size, or {CHANNEL} (whole "
                              f"channels), not {self.gate_tile}")
        if self.eps <= 0:
            raise PluginError(f"ecg: eps must be positive, not {self.eps}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]

    def target_at(self, step: int) -> float:
        """The sparsity target at a training step (the linear ramp)."""
        start = min(float(self.init_sparsity or 0.0), self.sparsity_target)
        if self.sparsity_ramp <= 0 or step >= self.sparsity_ramp:
            return float(self.sparsity_target)
        return start + (self.sparsity_target - start) * step / self.sparsity_ramp
