"""One exception family, so the CLI can print a clear message instead of a traceback."""


class VrtkError(Exception):
    """An error the user can act on; the CLI prints its message and exits with status 2."""


class ModelError(VrtkError):
    """Unknown architecture, unavailable weights, or a checkpoint that does not fit."""


class PluginError(VrtkError):
    """Unknown plugin, a plugin that failed to load, or a plugin that misbehaved."""


class ImageError(VrtkError):
    """An image that cannot be read or is not something we can code."""


class BitstreamError(VrtkError):
    """A .vrtk file that is damaged, truncated, of a newer format, or made by another model."""


class RateError(VrtkError):
    """A rate (lambda, quality or target bpp) outside what the model was trained for."""


class RecipeError(VrtkError):
    """A recipe that does not exist, an unknown key, or a run directory that would be overwritten."""


class ResourceError(VrtkError):
    """Work that would need more memory than the budget allows (refused before allocating), or an allocation that
    failed: named as such, never mistaken for a damaged input."""


class TrainingError(VrtkError):
    """Training cannot continue (for example a NaN loss); the last good checkpoint is kept."""
