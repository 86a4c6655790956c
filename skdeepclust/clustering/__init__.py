"""Stage 2: clustering feature matrices (scikit-learn clusterers, cuML, torch heads)."""

from ._registry import available_clusterer_names
from .feature_clusterer import FeatureClusterer, label_free_score

__all__ = ["FeatureClusterer", "available_clusterer_names", "label_free_score"]
