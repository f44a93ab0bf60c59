"""What a slim gated model is: plugin ``ecg-slim``, the ECG gates of a model whose always-closed channels were removed.

``vrtk export --slim`` (plugins/ecg/slim_export.py) removes, per link (vrtk/slim.py: the channels between two
convolutions), the input channels a gate (nearly) always closes. The gates that remain still decide per image, with
their own alpha (sliced to the kept channels). One thing does not slice: ECA's Conv1d runs across the channel axis,
so each channel's omega reads its neighbours' energies, and a removed channel's neighbours would get new neighbours.
:class:`SlimEnergyGate` keeps the original axis instead: it places the kept channels' energies at their original
positions, puts each removed channel's mean energy on the calibration images (``eca_fill``) where its energy was,
runs the original Conv1d (same kernel size, even when the shorter axis would give ECA another one) and reads omega
back at the kept positions. Where the removed channels were exactly zero (fill 0), the gate decides exactly as before.

The config is ECG's plus, per slimmed link, the original width and the kept channels' original indices; the link
names (``gs2``) do not depend on where other plugins (bm) moved the convolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from vrtk_plugins.ecg.config import EcgConfig
from vrtk_plugins.ecg.layer import EcgConv, EnergyGate, eca_kernel_size
from vrtk_plugins.ecg.plugin import EcgInjector

from vrtk.errors import PluginError
from vrtk.injection import Site, get_submodule, replace_submodule

MAX_FULL_WIDTH = 4096


@dataclass
class SlimEcgConfig(EcgConfig):
    """ECG's settings plus what was removed: ``full_channels[link]`` = the link's original width,
    ``kept_channels[link]`` = the original indices (increasing) of the channels it still has."""

    full_channels: dict[str, int] = field(default_factory=dict)
    kept_channels: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if set(self.full_channels) != set(self.kept_channels):
            raise PluginError(f"ecg-slim: full_channels and kept_channels name different links "
                              f"({sorted(self.full_channels)} vs {sorted(self.kept_channels)})")
        for link, full in self.full_channels.items():
            kept = self.kept_channels[link]
            if not (isinstance(full, int) and not isinstance(full, bool) and 1 <= full <= MAX_FULL_WIDTH):
                raise PluginError(f"ecg-slim: full_channels[{link!r}] must be a width 1..{MAX_FULL_WIDTH}, "
                                  f"not {full!r}")
            ok = (isinstance(kept, list) and kept and all(isinstance(i, int) and not isinstance(i, bool) for i in kept)
                  and all(a < b for a, b in zip(kept, kept[1:], strict=False)) and 0 <= kept[0] and kept[-1] < full)
            if not ok:
                raise PluginError(f"ecg-slim: kept_channels[{link!r}] must be increasing channel indices in "
                                  f"0..{full - 1} (at least one), not {str(kept)[:60]}")


class SlimEnergyGate(EnergyGate):
    """An :class:`EnergyGate` over the kept channels whose ECA still sees the original channel axis."""

    def __init__(self, kept: list[int], full: int, config: EcgConfig):
        super().__init__(len(kept), config)
        k = eca_kernel_size(full)
        if k != self.kernel_size:  # the original layer's kernel, not the one ECA would pick for the kept width
            self.eca_weight = nn.Parameter(torch.empty(1, 1, k))
            nn.init.kaiming_uniform_(self.eca_weight, a=math.sqrt(5))
        self.full_channels = full
        # built from the config; saved too, so that the model's fingerprint covers it (loading checks they agree)
        self.register_buffer("eca_slots", torch.tensor(kept, dtype=torch.long))
        # mean GAP(x^2) of each removed channel on the calibration images (entries of kept channels unused)
        self.register_buffer("eca_fill", torch.zeros(full))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        slots = state_dict.get(prefix + "eca_slots")
        if slots is not None and not torch.equal(slots.to(self.eca_slots.device), self.eca_slots):
            raise PluginError(f"ecg-slim: {prefix}eca_slots in the weights are not the kept channels the config names")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def omega(self, energy: torch.Tensor) -> torch.Tensor:
        full = self.eca_fill.to(energy.dtype).expand(energy.shape[0], -1).clone()
        full[:, self.eca_slots] = energy
        return super().omega(full)[:, self.eca_slots]

    def extra_repr(self) -> str:
        return f"channels={len(self.eca_slots)} of {self.full_channels}"


def slim_gate(conv: EcgConv, kept: list[int], full: int) -> SlimEnergyGate:
    """Put a :class:`SlimEnergyGate` into a gated convolution (same device and dtype); returns it."""
    param = conv.gate.alpha
    gate = SlimEnergyGate(kept, full, conv.gate.config).to(device=param.device, dtype=param.dtype)
    gate.eca_slots = gate.eca_slots.to(param.device)
    conv.gate = gate  # same attribute, same place in the state dict
    return gate


class SlimEcgInjector(EcgInjector):
    """Gates a slim model the way ``ecg`` gated its original: same placement and settings, slim gates where
    channels were removed."""

    name = "ecg-slim"
    description = "ECG gates of a slim model (vrtk export --slim): ECA over the original channel axis"
    config_class = SlimEcgConfig

    def inject(self, model: nn.Module, config: SlimEcgConfig) -> list[Site]:
        from vrtk.slim import find_links

        consumers = {link.consumer: link for link in find_links(model).values()}
        paths = self.plan(model, config)
        slimmed = {consumers[p].name: p for p in paths if p in consumers and consumers[p].name in config.kept_channels}
        missing = sorted(set(config.kept_channels) - set(slimmed))
        if missing:
            raise PluginError(f"ecg-slim: no gated convolution reads link {', '.join(missing)} in this model")
        sites = []
        for path in paths:
            conv = get_submodule(model, path)
            gated = EcgConv(conv, config)
            gated.gate.to(device=conv.weight.device, dtype=conv.weight.dtype)
            link = consumers.get(path)
            if link is not None and link.name in config.kept_channels:
                kept = list(config.kept_channels[link.name])
                if len(kept) != conv.in_channels:
                    raise PluginError(f"ecg-slim: link {link.name} keeps {len(kept)} channels but {path} reads "
                                      f"{conv.in_channels}")
                slim_gate(gated, kept, int(config.full_channels[link.name]))
            replace_submodule(model, path, gated)
            kind = "gate-convT2d" if isinstance(conv, nn.ConvTranspose2d) else "gate-conv2d"
            sites.append(Site(path, self.name, kind, gated.added_param_count()))
        return sites
