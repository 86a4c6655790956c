"""k-means on neighbour-smoothed features against k-means on the features as they come.

``NeighborSmoother`` (each row the mean of itself and its 10 nearest others,
twice) in front of ``FeatureClusterer`` in a scikit-learn ``Pipeline``. Embeds
the 10,000 CIFAR-10 test images with the SimCLR ResNet-18 and the packaged
EfficientNet-Lite0 (cached, as in ``heads.py``), then reports k-means accuracy
and NMI (k=10, n_init=10) on all of them and on random samples of several
sizes: mean and spread over samples and k-means seeds, and in how many of those
runs smoothing beat the plain features, seed for seed.

    python benchmarks/smoothing.py              # CPU: about 15 minutes on 2 cores, embedding included
    python benchmarks/smoothing.py --backbones simclr --sizes 2000 --samples 3
    python benchmarks/smoothing.py --clusterer temi --backbones simclr --sizes 10000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import numpy as np
from heads import N_CLASSES, add_feature_arguments, cifar10_test_features
from sklearn.metrics import normalized_mutual_info_score

from skdeepclust import FeatureClusterer
from skdeepclust._device import resolve_device
from skdeepclust.clustering import NeighborSmoother
from skdeepclust.metrics import cluster_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_feature_arguments(parser)
    parser.add_argument("--backbones", nargs="+", choices=["simclr", "efficientnet"],
                        default=["simclr", "efficientnet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 10000])
    parser.add_argument("--samples", type=int, default=5, help="random samples per size (one at 10,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="clusterer seeds on each sample")
    parser.add_argument("--clusterer", default="kmeans", help="a FeatureClusterer name (default: %(default)s)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    print(f"{args.clusterer} (k={N_CLASSES}) on the features as they come and after NeighborSmoother(); "
          "mean ± std over samples and seeds; 'wins': runs in which smoothing scored higher")
    header = (f"{'backbone':<13} {'n':>6} {'runs':>5} {'accuracy plain':>15} {'smoothed':>15} {'wins':>6}"
              f" {'NMI plain':>15} {'smoothed':>15} {'wins':>6}")
    print(header)
    print("-" * len(header))
    for backbone in args.backbones:
        features, labels, _ = cifar10_test_features(args.archive, args.model, args.cache_dir, device, backbone)
        for size in args.sizes:
            n_samples = 1 if size >= len(labels) else args.samples
            runs = []  # accuracy and NMI, plain then smoothed, per sample and seed
            for sample in range(n_samples):
                rows = np.random.default_rng(sample).permutation(len(labels))[:size]
                X, y = features[rows], labels[rows]
                # The smoothing does not depend on the clusterer's seed: done once per sample.
                smoothed = NeighborSmoother(device=device).fit_transform(X)
                for seed in args.seeds:
                    plain_labels, smoothed_labels = (
                        FeatureClusterer(args.clusterer, n_clusters=N_CLASSES, device=device,
                                         random_state=seed).fit_predict(rows_given)
                        for rows_given in (X, smoothed))
                    runs.append([score(y, found) for found in (plain_labels, smoothed_labels)
                                 for score in (cluster_accuracy, normalized_mutual_info_score)])
            runs = np.array(runs)
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(runs.mean(0), runs.std(0))]
            accuracy_wins, nmi_wins = int(np.sum(runs[:, 2] > runs[:, 0])), int(np.sum(runs[:, 3] > runs[:, 1]))
            print(f"{backbone:<13} {size:>6} {len(runs):>5} {cells[0]:>15} {cells[2]:>15} "
                  f"{f'{accuracy_wins}/{len(runs)}':>6} {cells[1]:>15} {cells[3]:>15} {f'{nmi_wins}/{len(runs)}':>6}",
                  flush=True)


if __name__ == "__main__":
    main()
