"""
Look at the clusters: a montage
===============================

Scores summarise a clustering, but a person decides whether its groups make sense
by looking at them. :func:`~skdeepclust.visualization.cluster_montage` draws one
row of thumbnails per cluster; given ``scores``, each row shows the cluster's most
typical members instead of a random draw.

Here 1,000 CIFAR-10 photos are clustered with k-means, and each photo's score is
the cosine similarity of its embedding to its cluster's centre.
"""

import matplotlib.pyplot as plt
import numpy as np
from _example_data import cifar10_test_photos, embed_photos

from skdeepclust import FeatureClusterer
from skdeepclust.visualization import cluster_montage

files, y, class_names = cifar10_test_photos(n_per_class=100)
features = embed_photos(files)  # ImageEmbedder(...).fit_transform(files)
clustering = FeatureClusterer(n_clusters=10, random_state=0).fit(features)
labels = clustering.labels_

# %%
# What each cluster holds, by the true classes (which the clustering never saw).
for cluster in np.unique(labels):
    classes = np.bincount(y[labels == cluster], minlength=len(class_names))
    top = np.argsort(-classes)[:2]
    print(f"cluster {cluster}: {classes.sum():3d} photos, "
          + ", ".join(f"{classes[c] / classes.sum():.0%} {class_names[c]}" for c in top))

# %%
# The most central members of each cluster. The features are unit vectors, so the
# dot product with the (renormalised) centre is the cosine similarity.
centres = clustering.cluster_centers_ / np.linalg.norm(
    clustering.cluster_centers_, axis=1, keepdims=True)
centre_of = dict(zip(clustering.cluster_ids_, centres))
typicality = np.einsum("ij,ij->i", features, np.stack([centre_of[label] for label in labels]))
montage = cluster_montage(files, labels, n_per_cluster=8, thumbnail_size=48, scores=typicality)
# ``montage`` is a PIL image: ``montage.save("montage.png")`` writes it to a file.

fig, axis = plt.subplots(figsize=(montage.width / 80, montage.height / 80), dpi=80)
axis.imshow(montage)
axis.set_axis_off()
fig.tight_layout(pad=0)
