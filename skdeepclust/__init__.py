"""Cluster images with pretrained self-supervised backbones, the scikit-learn way.

Two stages: :class:`ImageEmbedder` turns images into L2-normalised feature vectors
with any timm backbone, and :class:`FeatureClusterer` clusters them.
:class:`PretrainedFeatureClusterer` composes both into one estimator.
"""

from .clustering import FeatureClusterer
from .embedding import ImageEmbedder
from .pretrained_clusterer import PretrainedFeatureClusterer

__version__ = "0.1.0"

__all__ = ["FeatureClusterer", "ImageEmbedder", "PretrainedFeatureClusterer", "__version__"]
