"""How well the number of clusters is found without labels, on real features.

Embeds the 10,000 CIFAR-10 test images (10 classes) with the SimCLR ResNet-18, as
``heads.py`` does and from the same cache, then reports (a) the cosine silhouette
of k-means for each candidate k, the k that
:func:`skdeepclust.clustering.select_n_clusters` picks, and k-means accuracy and NMI
at that k and at the true k, and (b) the clusters and noise HDBSCAN finds with its
defaults, the other way the package offers to go without ``n_clusters``.

    python benchmarks/n_clusters.py              # CPU: about 4 minutes on 2 cores
    python benchmarks/n_clusters.py --candidates 5 10 15 20 --no-hdbscan
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import normalized_mutual_info_score
from heads import N_CLASSES, add_feature_arguments, cifar10_test_features

from skdeepclust import FeatureClusterer
from skdeepclust._device import resolve_device
from skdeepclust.clustering import select_n_clusters
from skdeepclust.metrics import cluster_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_feature_arguments(parser)
    parser.add_argument("--candidates", type=int, nargs="+", default=list(range(2, 21)))
    parser.add_argument("--no-hdbscan", action="store_true", help="skip HDBSCAN")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    features, labels, source = cifar10_test_features(args.archive, args.model, args.cache_dir, device)
    print(f"features {features.shape} from {source}; {N_CLASSES} true classes; device {device}")

    start = time.perf_counter()
    best, scores = select_n_clusters(features, args.candidates, random_state=0, device=device)
    print(f"select_n_clusters over {args.candidates[0]}..{args.candidates[-1]}: k={best} "
          f"({time.perf_counter() - start:.0f} s)")
    print("k   silhouette")
    for k, score in scores.items():
        print(f"{k:<3} {score:.4f}{'  <- picked' if k == best else ''}")
    for k in dict.fromkeys([best, N_CLASSES]):
        predicted = FeatureClusterer(n_clusters=k, random_state=0, device=device).fit_predict(features)
        print(f"k-means, k={k}: accuracy {cluster_accuracy(labels, predicted):.3f}, "
              f"NMI {normalized_mutual_info_score(labels, predicted):.3f}")

    if not args.no_hdbscan:
        start = time.perf_counter()
        predicted = FeatureClusterer("hdbscan").fit_predict(features)
        found = np.unique(predicted[predicted >= 0]).size
        print(f"HDBSCAN (defaults): {found} clusters, {np.mean(predicted < 0):.1%} of the images "
              f"noise, NMI {normalized_mutual_info_score(labels, predicted):.3f} "
              f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
