"""Stage 2: clustering feature matrices (scikit-learn clusterers, cuML, torch heads)."""

from .._lazy import lazy_namespace
from ._registry import available_clusterer_names

__getattr__, __dir__ = lazy_namespace(__name__, {
    "DebiasedClusterer": "debiased",
    "FeatureClusterer": "feature_clusterer",
    "label_free_score": "feature_clusterer",
    "TorchKMeans": "kmeans",
    "select_n_clusters": "model_selection",
    "mine_nearest_neighbors": "neighbors",
    "NeighborSmoother": "smoothing",
    "SCANClusterer": "scan",
    "TEMIClusterer": "temi",
}, globals())

__all__ = [
    "DebiasedClusterer",
    "FeatureClusterer",
    "NeighborSmoother",
    "SCANClusterer",
    "TEMIClusterer",
    "TorchKMeans",
    "available_clusterer_names",
    "label_free_score",
    "mine_nearest_neighbors",
    "select_n_clusters",
]
