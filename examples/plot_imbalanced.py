"""
Clusters of very different sizes
================================

Real collections are rarely balanced: a few categories hold most of the photos.
Here the CIFAR-10 test photos are thinned to a long tail, from 300 photos of the
first class down to 15 of the last (a 20:1 imbalance, geometric in between), and
clustered into 10 groups by

- k-means, which prefers clusters of similar spread;
- ``"scan"`` (:class:`~skdeepclust.clustering.SCANClusterer`), whose entropy term
  pushes every cluster towards a tenth of the data;
- ``"debiased"`` (:class:`~skdeepclust.clustering.DebiasedClusterer`), which
  relaxes that prior and merges over-clustered groups along the neighbour graph
  so that cluster sizes can follow the data.

Accuracy counts photos, so it is dominated by the big classes; NMI and ARI are
printed beside it, and the figure compares the cluster sizes with the class sizes.
"""

import matplotlib.pyplot as plt
import numpy as np
from _example_data import cifar10_test_photos, embed_photos
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepclust import FeatureClusterer
from skdeepclust.metrics import cluster_accuracy

largest, imbalance = 300, 20
files, y, class_names = cifar10_test_photos(n_per_class=largest)
n_classes = len(class_names)
class_sizes = np.round(largest * imbalance ** (-np.arange(n_classes) / (n_classes - 1))).astype(int)
# The draw per class is already random, so keeping its first photos keeps a random subset.
kept = np.concatenate([np.flatnonzero(y == label)[:size] for label, size in enumerate(class_sizes)])
files, y = [files[i] for i in kept], y[kept]
print("photos per class:", dict(zip(class_names, class_sizes.tolist())))

features = embed_photos(files)  # ImageEmbedder(...).fit_transform(files)

# %%
sizes = {"true classes": np.sort(class_sizes)[::-1]}
for name in ["kmeans", "scan", "debiased"]:
    labels = FeatureClusterer(name, n_clusters=n_classes, random_state=0).fit(features).labels_
    sizes[name] = np.sort(np.bincount(labels, minlength=n_classes))[::-1]
    print(f"{name:9s} accuracy {cluster_accuracy(y, labels):.3f}  "
          f"NMI {normalized_mutual_info_score(y, labels):.3f}  "
          f"ARI {adjusted_rand_score(y, labels):.3f}  sizes {sizes[name].tolist()}")

# %%
# Cluster sizes, largest first, against the class sizes.
fig, axis = plt.subplots(figsize=(6, 3.5))
for name, counts in sizes.items():
    style = "k--" if name == "true classes" else "o-"
    axis.plot(np.arange(1, len(counts) + 1), counts, style, label=name)
axis.set_xlabel("rank")
axis.set_ylabel("photos")
axis.set_yscale("log")
axis.legend()
fig.tight_layout()
