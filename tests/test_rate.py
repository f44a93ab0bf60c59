"""The rate parameter: quality <-> lambda mapping, range checks, and the use_rate block."""

from __future__ import annotations

import math
import types

import pytest

from vrtk.errors import RateError
from vrtk.hookspecs import hookimpl
from vrtk.plugin_manager import Registry
from vrtk.rate import check_lambda, log_spaced, quality_to_lambda, use_rate

LAMS = [0.0018, 0.0035, 0.0067, 0.013]


def test_quality_maps_log_linearly_onto_trained_lambdas():
    assert quality_to_lambda(1, LAMS) == 0.0018 and quality_to_lambda(4, LAMS) == 0.013
    assert math.isclose(quality_to_lambda(2.5, LAMS), math.sqrt(0.0035 * 0.0067))
    with pytest.raises(RateError, match="outside the trained range 1..4"):
        quality_to_lambda(4.5, LAMS)


def test_lambda_range_is_checked():
    assert check_lambda(0.005, LAMS) == 0.005
    for bad in (0.1, 0.001, -1.0, float("nan")):
        with pytest.raises(RateError):
            check_lambda(bad, LAMS)
    spaced = log_spaced(0.001, 0.1, 3)
    assert math.isclose(spaced[1], 0.01)


def test_use_rate_nests_and_clears():
    seen = []
    plugin = types.SimpleNamespace(vrtk_set_rate=hookimpl(lambda model, lmbda: seen.append(lmbda)))
    registry = Registry(autoload=False)
    registry.add_plugin(plugin, "recorder")
    model = types.SimpleNamespace()
    with use_rate(model, 0.01, registry):
        with use_rate(model, 0.02, registry):
            pass
    assert seen == [0.01, 0.02, 0.01, None]
