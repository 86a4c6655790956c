"""Stage 1: images to feature vectors with a frozen timm backbone."""

import importlib
import warnings

from .backbone import Preprocessing, PretrainedWeightsUnavailable, read_checkpoint
from .embedder import ImageEmbedder
from .images import IMAGE_EXTENSIONS, find_image_files

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


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = f"{__name__}.{_MOVED[name]}"
    warnings.warn(
        f"{__name__}.{name} is internal and leaves this namespace in 0.3; "
        f"import it from {module} if you must.",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
