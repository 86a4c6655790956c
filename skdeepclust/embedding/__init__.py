"""Stage 1: images to feature vectors with a frozen timm backbone."""

import importlib
import warnings

from .._lazy import lazy_namespace

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageEmbedder",
    "Preprocessing",
    "PretrainedWeightsUnavailable",
    "find_image_files",
    "read_checkpoint",
]

# Internal helpers that 0.1.0 listed here; still importable, with a warning, until 0.3.
_MOVED = {"as_images": "images", "build_backbone": "backbone"}


def _moved(name):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = f"{__name__}.{_MOVED[name]}"
    warnings.warn(
        f"{__name__}.{name} is internal and leaves this namespace in 0.3; "
        f"import it from {module} if you must.",
        FutureWarning,
        stacklevel=3,  # past the package's __getattr__
    )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # ``from ... import`` asks twice; one warning is enough
    return value


__getattr__, __dir__ = lazy_namespace(__name__, {
    "IMAGE_EXTENSIONS": "image_files",
    "ImageEmbedder": "embedder",
    "Preprocessing": "backbone",
    "PretrainedWeightsUnavailable": "backbone",
    "find_image_files": "image_files",
    "read_checkpoint": "backbone",
}, globals(), otherwise=_moved)
