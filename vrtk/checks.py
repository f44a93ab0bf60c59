"""Value checks shared by the model-folder checks and the model builder, kept below both so neither imports
the other: integer and number tests that refuse bools, a short description of a bad value for a message, and the
architecture-size check every build runs."""

from __future__ import annotations

import json

from vrtk.errors import ModelError

MAX_WIDTH = 1024  # N, M and any other architecture size: 3x CompressAI's largest
MAX_ARCH_KWARGS = 16


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shown(value) -> str:
    """A short description of a value for a message (never megabytes of it)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'} ({short_text(value)})"
    if value is None:
        return "missing (null)"
    return short_text(value)


def short_text(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_arch_kwargs(kwargs, where: str) -> None:
    """Architecture sizes: a small object of positive integers up to MAX_WIDTH."""
    if not isinstance(kwargs, dict):
        raise ModelError(f"{where} must be an object of sizes (e.g. {{\"N\": 128, \"M\": 192}}), not {shown(kwargs)}")
    if len(kwargs) > MAX_ARCH_KWARGS:
        raise ModelError(f"{where}: {len(kwargs)} entries (at most {MAX_ARCH_KWARGS})")
    for key, value in kwargs.items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise ModelError(f"{where}: {shown(key)} is not an argument name")
        if not is_int(value) or not 1 <= value <= MAX_WIDTH:
            raise ModelError(f"{where}.{key} must be an integer 1..{MAX_WIDTH}, not {shown(value)}")
