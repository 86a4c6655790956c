"""k-means on PCA-whitened features against k-means on the features as they come.

Whitening (``PCA(n_components, whiten=True)`` then L2 normalisation, as a
scikit-learn ``Pipeline`` in front of ``FeatureClusterer``) gives every principal
direction the same variance, so that k-means weighs the few dominant directions
of a self-supervised embedding less. Embeds the 10,000 CIFAR-10 test images with
the SimCLR ResNet-18 and the packaged EfficientNet-Lite0 (cached, as in
``heads.py``), then reports k-means accuracy (k=10, n_init=10) on random samples
of several sizes, mean and spread over the samples, and on how many samples
each whitening beat the plain features.

    python benchmarks/whitening.py               # CPU: about 15 minutes on 2 cores
    python benchmarks/whitening.py --sizes 2000 --components 32 --samples 3
"""

from __future__ import annotations

import argparse

import numpy as np
from heads import N_CLASSES, add_feature_arguments, cifar10_test_features
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from skdeepclust import FeatureClusterer
from skdeepclust._device import resolve_device
from skdeepclust.metrics import cluster_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_feature_arguments(parser)
    parser.add_argument("--backbones", nargs="+", choices=["simclr", "efficientnet"],
                        default=["simclr", "efficientnet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 10000])
    parser.add_argument("--components", type=int, nargs="+", default=[16, 32, 48, 64])
    parser.add_argument("--samples", type=int, default=5, help="random samples per size (one at 10,000)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    print(f"k-means accuracy (k={N_CLASSES}), mean ± std over samples; "
          "'wins': samples on which whitening beat the plain features")
    header = f"{'backbone':<13} {'n':>6} {'plain':>13} " + " ".join(
        f"{f'white {d}':>20}" for d in args.components)
    print(header)
    print("-" * len(header))
    for backbone in args.backbones:
        features, labels, _ = cifar10_test_features(args.archive, args.model, args.cache_dir, device, backbone)
        for size in args.sizes:
            n_samples = 1 if size >= len(labels) else args.samples
            scores = []  # one row per sample: plain, then each whitening
            for seed in range(n_samples):
                rows = np.random.default_rng(seed).permutation(len(labels))[:size]
                X, y = features[rows], labels[rows]
                models = [FeatureClusterer(n_clusters=N_CLASSES, random_state=0)] + [
                    make_pipeline(PCA(d, whiten=True, random_state=0), Normalizer(),
                                  FeatureClusterer(n_clusters=N_CLASSES, random_state=0))
                    for d in args.components]
                scores.append([cluster_accuracy(y, model.fit_predict(X)) for model in models])
            scores = np.array(scores)
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(scores.mean(0), scores.std(0))]
            wins = [int(np.sum(scores[:, i] > scores[:, 0])) for i in range(1, scores.shape[1])]
            print(f"{backbone:<13} {size:>6} {cells[0]:>13} " + " ".join(
                f"{f'{cell} ({win}/{n_samples})':>20}" for cell, win in zip(cells[1:], wins)), flush=True)


if __name__ == "__main__":
    main()
