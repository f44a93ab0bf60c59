"""Evaluation and reports: ``evaluate`` (model sweeps), ``classical`` (JPEG/WebP), ``measure`` (quality, time,
memory), ``results`` (CompressAI-schema JSON and curves), ``bdrate``, ``storage`` and ``report``."""
