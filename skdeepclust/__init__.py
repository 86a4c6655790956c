"""Cluster images with pretrained self-supervised backbones, the scikit-learn way.

Two stages: :class:`ImageEmbedder` turns images into L2-normalised feature vectors
with any timm backbone, and :class:`FeatureClusterer` clusters them.
:class:`PretrainedFeatureClusterer` composes both into one estimator.
"""

import importlib

from ._lazy import lazy_namespace

__version__ = "0.1.0"

# Reachable as attributes, as numpy's are: skdeepclust.datasets.load_image_folder.
_SUBMODULES = ("clustering", "datasets", "embedding", "metrics", "visualization")


def _submodule(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__getattr__, __dir__ = lazy_namespace(__name__, {
    "FeatureClusterer": "clustering",
    "ImageEmbedder": "embedding",
    "PretrainedFeatureClusterer": "pretrained_clusterer",
}, globals(), otherwise=_submodule)

__all__ = ["FeatureClusterer", "ImageEmbedder", "PretrainedFeatureClusterer", "__version__"]
