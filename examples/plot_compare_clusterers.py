"""
Compare clusterers on the same features
=======================================

:class:`~skdeepclust.FeatureClusterer` takes a clusterer by name, so trying
several on the same embeddings is a loop. Here 1,000 CIFAR-10 photos are embedded
once and clustered into 10 groups by

- scikit-learn's k-means, agglomerative (Ward) clustering and a Gaussian mixture;
- the clustering heads of ``skdeepclust.clustering``, small networks trained on
  the frozen features so that each photo and its nearest neighbours fall in the
  same confident cluster: ``"scan"``
  (:class:`~skdeepclust.clustering.SCANClusterer`), ``"temi"``
  (:class:`~skdeepclust.clustering.TEMIClusterer`) and ``"debiased"``
  (:class:`~skdeepclust.clustering.DebiasedClusterer`), with their default settings.

The labels only score the results.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from _example_data import cifar10_test_photos, embed_photos
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepclust import FeatureClusterer
from skdeepclust.metrics import cluster_accuracy

files, y, class_names = cifar10_test_photos(n_per_class=100)
features = embed_photos(files)  # ImageEmbedder(...).fit_transform(files)

# %%
# Fit each clusterer and score it against the classes.
clusterers = ["kmeans", "agglomerative", "gmm", "scan", "temi", "debiased"]
results = {}
for name in clusterers:
    start = time.perf_counter()
    labels = FeatureClusterer(name, n_clusters=10, random_state=0).fit(features).labels_
    results[name] = dict(
        accuracy=cluster_accuracy(y, labels),
        NMI=normalized_mutual_info_score(y, labels),
        ARI=adjusted_rand_score(y, labels),
        seconds=time.perf_counter() - start,
    )
    print(f"{name:14s}" + "  ".join(f"{metric} {value:.3f}"
                                     for metric, value in results[name].items()))

# %%
# The three scores side by side.
metrics = ["accuracy", "NMI", "ARI"]
positions = np.arange(len(clusterers))
fig, axis = plt.subplots(figsize=(7, 3.5))
for offset, metric in enumerate(metrics):
    axis.bar(positions + (offset - 1) * 0.27, [results[name][metric] for name in clusterers],
             width=0.27, label=metric)
axis.set_xticks(positions, clusterers)
axis.set_ylabel("agreement with the classes")
axis.legend()
fig.tight_layout()
