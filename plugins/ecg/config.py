"""Settings of the ECG plugin (energy-based channel gating, Yin et al.), one dataclass saved with the model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vrtk.errors import PluginError

ESTIMATORS = ("ste", "soft")
CHANNEL = -1  # gate_tile value: one decision per (image, channel)
INIT_SCOPES = ("channel", "layer")
ALPHA_REDUCTIONS = ("mean", "sum")
# Every field a saved config held before ``alpha_reduction`` existed (all of them were there from the start).
FIELDS_BEFORE_ALPHA_REDUCTION = frozenset({
    "targets", "exclude", "estimator", "eps", "eps_relative", "energy_relative", "alpha_init", "init_sparsity",
    "init_scope", "alpha_t", "gamma", "sparsity_target", "sparsity_weight", "sparsity_ramp", "gate_tile"})


def upgrade_saved(values: dict) -> dict:
    """A model folder saved before ``alpha_reduction`` existed names every older field and was trained with the
    channel sum: give it that sum back, so fine-tuning it further (ecg-bm-finetune) keeps its loss."""
    if FIELDS_BEFORE_ALPHA_REDUCTION <= set(values) and "alpha_reduction" not in values:
        return {**values, "alpha_reduction": "sum"}
    return values


def _check_layer_map(key: str, mapping: dict, what: str, valid) -> None:
    """A ``{regex: number}`` option: every key compiles and every value is a number ``valid`` accepts."""
    for pattern, value in dict(mapping).items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise PluginError(f"ecg: {key} key {pattern!r} is not a regex ({exc})") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
            raise PluginError(f"ecg: {key}[{pattern!r}] must be {what}, not {value!r}")


def _first_match(mapping: dict, layer: str, default: float) -> float:
    """The value of the first regex in ``mapping`` that fully matches ``layer``, else ``default``."""
    for pattern, value in mapping.items():
        if re.fullmatch(pattern, layer):
            return float(value)
    return float(default)


@dataclass
class EcgConfig:
    """What to gate, how the gate trains, and how sparse it should become.

    The defaults are Yin et al.'s method as published; every option marked *not in the paper* is off unless asked.

    Placement: ``targets=None`` gates every Conv2d/ConvTranspose2d of g_a, g_s, h_a, h_s except the convolutions
    that read each sub-network's input (the "first layer"); ``targets``/``exclude`` are exact module names or
    full regexes and replace that default.

    Thresholds: th = omega * alpha (paper). ``energy_relative`` (not in the paper): th = omega * alpha * mean(x^2),
    a threshold the network cannot escape by growing its activations. ``alpha`` starts at ``alpha_init`` (paper:
    below ``alpha_t``, here 0, so the alpha term pulls it up). ``init_sparsity`` (not in the paper) instead sets
    alpha from the first training batch (like Glow's ActNorm) so that this fraction of each channel's
    (``init_scope=channel``) or the layer's (``layer``) inputs is zeroed.

    Training: ``estimator=ste`` runs the hard mask forward with the gradient of sigmoid(eps * z), z = x^2 - th
    (paper); ``soft`` trains with that sigmoid as the mask. ``eps_relative`` (not in the paper) divides z by the
    channel's mean energy inside the sigmoid, so one ``eps`` suits layers of any scale.

    Granularity: ``gate_tile=0`` decides per element (paper). ``gate_tile=T`` (not in the paper) compares the mean
    energy of each T x T tile of a channel with the threshold instead: element-wise zeros save FLOPs but no CPU
    time, whole (tile, channel) blocks let the sparse inference path skip work (see sparse.py and the README).
    ``gate_tile=-1`` (``CHANNEL``, not in the paper) decides per channel and image: a channel whose mean energy
    GAP(x^2) is below its threshold is dropped whole, and the sparse path runs one convolution on the survivors.

    Losses: gamma * mean_i (alpha_i - alpha_t)^2 per gated layer, summed over layers (paper: "a relatively high
    target value alpha_t ... the mean square error of present alpha and alpha_t as an additional loss term",
    gamma = alpha_t = 1e-4); ``alpha_reduction=sum`` (not in the paper) sums over the channels instead. When
    ``sparsity_target`` is set (not in the paper), ``sparsity_weight`` * sum over layers of
    max(0, target - sparsity)^2 is added, where the sparsity is the measured (hard) zero fraction with the
    gradient of the soft mask; the target rises linearly from ``init_sparsity`` (or 0) to ``sparsity_target`` over
    ``sparsity_ramp`` steps. ``layer_targets`` (not in the paper) gives some layers their own target: ``{regex:
    target}``, the first regex that fully matches a gated layer's name wins (e.g. ``{"g_s\\..*": 0.3}``: the
    synthesis transform, which the study found least tolerant of zeros, gated less than the rest).
    ``layer_alpha_t`` (not in the paper) does the same for the paper's own loss: ``{regex: alpha_t}`` gives the
    matching layers their own target threshold (e.g. ``{"g_s\\..*": 1e-3}``: a gentler pull on the decoder).

    Recovery: ``freeze_gates`` (not in the paper) holds alpha and the ECA weights where they are (no gradient, no
    alpha term) while the base fine-tunes around the gates; ``train=`` cannot do it, as it always trains plugins.
    """

    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    estimator: str = "ste"  # ste: hard forward, sigmoid(eps*z) gradient; soft: sigmoid(eps*z) mask in training
    eps: float = 10.0
    eps_relative: bool = False  # not in the paper: z / mean(x^2) (no gradient) inside the sigmoid
    energy_relative: bool = False  # not in the paper: th = omega * alpha * mean(x^2)
    alpha_init: float = 0.0  # paper: below alpha_t, so the alpha term raises the thresholds
    init_sparsity: float | None = None  # not in the paper: alpha calibrated on the first batch
    init_scope: str = "channel"
    alpha_t: float = 1e-4  # paper
    gamma: float = 1e-4  # paper
    alpha_reduction: str = "mean"  # paper: mean over a layer's channels; "sum" (not in the paper) sums them
    sparsity_target: float = 0.0  # 0 = no sparsity penalty (the paper's loss only); > 0 is not in the paper
    sparsity_weight: float = 1.0
    sparsity_ramp: int = 0
    layer_targets: dict[str, float] = field(default_factory=dict)  # not in the paper: {regex: sparsity target}
    layer_alpha_t: dict[str, float] = field(default_factory=dict)  # not in the paper: {regex: alpha_t}
    gate_tile: int = 0  # 0: element-wise (paper); T > 0: per channel and T x T tile; -1: per channel (deviations)
    freeze_gates: bool = False  # not in the paper: alpha and the ECA weights get no gradient (recovery fine-tuning)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise PluginError(f"ecg: estimator must be one of {ESTIMATORS}, not {self.estimator!r}")
        if self.alpha_reduction not in ALPHA_REDUCTIONS:
            raise PluginError(f"ecg: alpha_reduction must be one of {ALPHA_REDUCTIONS}, not {self.alpha_reduction!r}")
        if self.init_scope not in INIT_SCOPES:
            raise PluginError(f"ecg: init_scope must be one of {INIT_SCOPES}, not {self.init_scope!r}")
        if self.init_sparsity is not None and not 0.0 <= float(self.init_sparsity) < 1.0:
            raise PluginError(f"ecg: init_sparsity must be in [0, 1), not {self.init_sparsity}")
        if not 0.0 <= float(self.sparsity_target) < 1.0:
            raise PluginError(f"ecg: sparsity_target must be in [0, 1), not {self.sparsity_target}")
        _check_layer_map("layer_targets", self.layer_targets, "a sparsity in [0, 1)", lambda v: 0.0 <= v < 1.0)
        _check_layer_map("layer_alpha_t", self.layer_alpha_t, "a threshold >= 0", lambda v: v >= 0.0)
        if int(self.gate_tile) < CHANNEL:
            raise PluginError(f"ecg: gate_tile must be 0 (element-wise), a tile size, or {CHANNEL} (whole "
                              f"channels), not {self.gate_tile}")
        if self.eps <= 0:
            raise PluginError(f"ecg: eps must be positive, not {self.eps}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]

    def final_target(self, layer: str) -> float:
        """The sparsity target of a gated layer: its ``layer_targets`` entry, else ``sparsity_target``."""
        return _first_match(self.layer_targets, layer, self.sparsity_target)

    def alpha_t_for(self, layer: str) -> float:
        """The alpha term's target of a gated layer: its ``layer_alpha_t`` entry, else ``alpha_t``."""
        return _first_match(self.layer_alpha_t, layer, self.alpha_t)

    def target_at(self, step: int, layer: str = "") -> float:
        """The sparsity target of ``layer`` at a training step (the linear ramp)."""
        final = self.final_target(layer)
        start = min(float(self.init_sparsity or 0.0), final)
        if self.sparsity_ramp <= 0 or step >= self.sparsity_ramp:
            return final
        return start + (final - start) * step / self.sparsity_ramp
