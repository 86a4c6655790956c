"""Stage 2: clustering feature matrices (scikit-learn clusterers, cuML, torch heads)."""

from ._registry import available_clusterer_names
from .debiased import DebiasedClusterer
from .feature_clusterer import FeatureClusterer, label_free_score
from .kmeans import TorchKMeans
from .model_selection import select_n_clusters
from .neighbors import mine_nearest_neighbors
from .scan import SCANClusterer
from .temi import TEMIClusterer

__all__ = [
    "DebiasedClusterer",
    "FeatureClusterer",
    "SCANClusterer",
    "TEMIClusterer",
    "TorchKMeans",
    "available_clusterer_names",
    "label_free_score",
    "mine_nearest_neighbors",
    "select_n_clusters",
]
