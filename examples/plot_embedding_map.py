"""
Map of the embeddings
=====================

A picture of what the clusterer sees: the 512-dimensional embeddings of 1,000
CIFAR-10 photos, reduced to 50 dimensions with PCA and then to 2 with t-SNE, with
each photo coloured by its k-means cluster (left) and by its true class (right).
Classes that share a region of the map (cat and dog, automobile and truck) are
the ones the clusters mix up.
"""

import matplotlib.pyplot as plt
from _example_data import cifar10_test_photos, embed_photos
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from skdeepclust import FeatureClusterer
from skdeepclust.metrics import cluster_accuracy

files, y, class_names = cifar10_test_photos(n_per_class=100)
features = embed_photos(files)  # ImageEmbedder(...).fit_transform(files)
labels = FeatureClusterer(n_clusters=10, random_state=0).fit(features).labels_
print(f"k-means accuracy {cluster_accuracy(y, labels):.3f}")

# %%
# PCA first removes noise dimensions and makes t-SNE faster.
pca = PCA(n_components=50, random_state=0)
reduced = pca.fit_transform(features)
print(f"50 PCA components keep {pca.explained_variance_ratio_.sum():.0%} of the variance")
coordinates = TSNE(n_components=2, init="pca", perplexity=30, random_state=0).fit_transform(reduced)

# %%
fig, (by_cluster, by_class) = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
by_cluster.scatter(*coordinates.T, c=labels, cmap="tab10", s=6)
by_cluster.set_title("k-means clusters")
for label, name in enumerate(class_names):
    members = y == label
    by_class.scatter(*coordinates[members].T, color=plt.cm.tab10(label), s=6, label=name)
by_class.set_title("true classes")
by_class.legend(fontsize="x-small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
for axis in (by_cluster, by_class):
    axis.set_xticks([])
    axis.set_yticks([])
fig.tight_layout()
