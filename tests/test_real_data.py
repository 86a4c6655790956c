"""Clustering real photos with a real self-supervised backbone (needs ../shared)."""

import numpy as np
import pytest
from conftest import SIMCLR_RESNET18
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.pipeline import make_pipeline

from skdeepclust import FeatureClusterer, PretrainedFeatureClusterer
from skdeepclust.clustering import NeighborSmoother
from skdeepclust.datasets import load_image_folder
from skdeepclust.embedding.presets import SIMCLR_RESNET18_CIFAR10
from skdeepclust.metrics import cluster_accuracy



@pytest.mark.slow
def test_cifar10_clusters_far_above_chance(cifar10_test_folder):
    if not SIMCLR_RESNET18.is_file():
        pytest.skip(f"SimCLR backbone not found at {SIMCLR_RESNET18} (../shared is absent)")
    files, y = load_image_folder(cifar10_test_folder, max_per_class=100, random_state=0, return_X_y=True)
    est = PretrainedFeatureClusterer(
        **SIMCLR_RESNET18_CIFAR10, pretrained=SIMCLR_RESNET18, n_clusters=10, batch_size=250, random_state=0
    ).fit(files)
    accuracy = cluster_accuracy(y, est.labels_)
    nmi = normalized_mutual_info_score(y, est.labels_)
    ari = adjusted_rand_score(y, est.labels_)
    print(f"CIFAR-10, 1,000 test images, SimCLR ResNet-18 + k-means: "
          f"accuracy {accuracy:.3f}, NMI {nmi:.3f}, ARI {ari:.3f}")
    # Chance is 0.10; k-means on these features reaches about 0.5.
    assert accuracy > 0.35 and nmi > 0.25
    # Inductive use: the training images predicted again land in their own clusters.
    assert np.mean(est.predict(files[::50]) == est.labels_[::50]) >= 0.9
    # Neighbour smoothing in front of k-means: NMI rose on every sample of 1,000 and
    # 2,000 photos in benchmarks/smoothing.py, accuracy on most.
    features = est.transform(files)
    smoothed = make_pipeline(NeighborSmoother(), FeatureClusterer(n_clusters=10, random_state=0)).fit_predict(features)
    smoothed_nmi = normalized_mutual_info_score(y, smoothed)
    print(f"with NeighborSmoother() in front: accuracy {cluster_accuracy(y, smoothed):.3f}, NMI {smoothed_nmi:.3f}")
    assert smoothed_nmi > nmi + 0.01
