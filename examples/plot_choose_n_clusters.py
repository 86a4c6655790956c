"""
Choose the number of clusters without labels
=============================================

:func:`~skdeepclust.clustering.select_n_clusters` fits one clustering per candidate
number of clusters and keeps the one whose clusters have the largest cosine
silhouette on the features. Unlike the k-means inertia, the silhouette does not
improve just because there are more clusters, so its maximum can be taken as it is,
with no elbow to read off a curve. It is a weak signal all the same, as this
example shows.

Here 1,000 CIFAR-10 photos (10 classes) are embedded once, the silhouette is
computed for 4 to 16 clusters, and the clustering accuracy (which needs the labels
and is shown only for reference) is compared at the chosen and the true number.
"""

import matplotlib.pyplot as plt
from _example_data import cifar10_test_photos, embed_photos

from skdeepclust import FeatureClusterer
from skdeepclust.clustering import select_n_clusters
from skdeepclust.metrics import cluster_accuracy

files, y, class_names = cifar10_test_photos(n_per_class=100)
features = embed_photos(files)  # ImageEmbedder(...).fit_transform(files)

# %%
# The silhouette of each candidate.
candidates = range(4, 17, 2)
best_n_clusters, silhouettes = select_n_clusters(features, candidates, random_state=0)
print(f"chosen n_clusters: {best_n_clusters} (the data has {len(class_names)} classes)")
for k in candidates:
    print(f"  k={k:2d}  silhouette {silhouettes[k]:.4f}")

fig, axis = plt.subplots(figsize=(6, 3.5))
axis.plot(list(silhouettes), list(silhouettes.values()), "o-")
axis.axvline(best_n_clusters, color="C3", linestyle="--", label=f"chosen: {best_n_clusters}")
axis.axvline(len(class_names), color="grey", linestyle=":", label="true number of classes")
axis.set_xlabel("n_clusters")
axis.set_ylabel("cosine silhouette")
axis.legend()
fig.tight_layout()

# %%
# On these features the curve is nearly flat from about 7 clusters on, and its
# maximum can fall well above the 10 true classes: CIFAR-10 classes are not
# compact, well-separated groups in this embedding. Read the curve, not only its
# maximum, and check the clusters by eye (see the montage example). For reference
# only, since it needs the labels: how well the clusterings match the classes.
for k in sorted({best_n_clusters, len(class_names)}):
    labels = FeatureClusterer(n_clusters=k, random_state=0).fit(features).labels_
    print(f"k={k:2d}: accuracy {cluster_accuracy(y, labels):.3f}")
