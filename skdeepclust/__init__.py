"""Cluster images with pretrained self-supervised backbones, the scikit-learn way.

Two stages: :class:`ImageEmbedder` turns images into L2-normalised feature vectors
with any timm backbone, and :class:`FeatureClusterer` clusters them.
:class:`PretrainedFeatureClusterer` composes both into one estimator.
"""

from ._lazy import lazy_namespace

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_namespace(__name__, {
    "FeatureClusterer": "clustering",
    "ImageEmbedder": "embedding",
    "PretrainedFeatureClusterer": "pretrained_clusterer",
}, globals(), submodules=("clustering", "datasets", "embedding", "metrics", "visualization"))

__all__ = ["FeatureClusterer", "ImageEmbedder", "PretrainedFeatureClusterer", "__version__"]
