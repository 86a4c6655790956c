"""Clustering heads against k-means on frozen self-supervised CIFAR-10 features.

Embeds the 10,000 CIFAR-10 test images once with a SimCLR ResNet-18 (cached to a
file, so re-runs start at once), then clusters (a) the balanced test split and
(b) long-tailed subsets with imbalance ratios 10 and 100, class c keeping
``round(1000 * ratio ** (-c / 9))`` images drawn with a fixed seed. Reports
clustering accuracy (Hungarian), NMI and ARI of k-means and each head.

    python benchmarks/heads.py                  # CPU: about 7 minutes on 2 busy cores,
                                                # 3 of them embedding (cached afterwards)
    python benchmarks/heads.py --device cuda
    python benchmarks/heads.py --seeds 0 1 2 3 4 5   # mean and spread over training seeds
    python benchmarks/heads.py --threads 1           # on a CPU shared with other jobs
    python benchmarks/heads.py --methods TEMI --temi-teacher-temperature 0.05

On the CPU, k-means is scikit-learn's KMeans (n_init=10); on CUDA it is
TorchKMeans (n_init=10).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepclust import ImageEmbedder
from skdeepclust.clustering import DebiasedClusterer, SCANClusterer, TEMIClusterer, TorchKMeans
from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.embedding.presets import SIMCLR_RESNET18_CIFAR10
from skdeepclust.metrics import cluster_accuracy

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
DEFAULT_MODEL = REPO_ROOT.parent / "shared" / "models" / "resnet18-simclr-cifar10.safetensors"
N_CLASSES = 10
LARGEST_CLASS = 1000


def cifar10_test_features(archive, model_path, cache_dir, device, backbone="simclr"):
    """(features, labels) of the CIFAR-10 test split, computed once and cached.

    ``backbone`` is "simclr", the SimCLR ResNet-18 at ``model_path`` (96 px), or
    "efficientnet", the packaged ImageNet EfficientNet-Lite0 at 128 px.
    """
    if backbone == "simclr":
        name, params = Path(model_path).stem, dict(SIMCLR_RESNET18_CIFAR10, pretrained=model_path)
    else:
        name, params = "efficientnet_lite0_128", dict(backbone="efficientnet_lite0.offline", image_size=128)
    cache_file = cache_dir / f"cifar10_test_{name}.npz"
    if cache_file.exists():
        cached = np.load(cache_file)
        return cached["features"], cached["labels"], "cache " + str(cache_file)
    paths, labels = load_image_folder(extract_image_archive(archive, cache_dir) / "test", return_X_y=True)
    embedder = ImageEmbedder(**params, device=str(device), batch_size=250)
    features = embedder.fit_transform(paths)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, features=features, labels=labels)
    return features, labels, "ImageEmbedder"


def add_feature_arguments(parser):
    """The options of the scripts that cluster these cached features: where the photos,
    the SimCLR weights and the cache are, and the device."""
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "skdeepclust"
                        / "benchmarks")
    parser.add_argument("--device", default="auto")


def long_tailed_subset(labels, ratio, seed):
    """Indices keeping round(1000 * ratio**(-c/9)) samples of class c, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    kept = []
    for label in range(N_CLASSES):
        size = int(round(LARGEST_CLASS * ratio ** (-label / (N_CLASSES - 1))))
        kept.append(np.sort(rng.choice(np.flatnonzero(labels == label), size, replace=False)))
    return np.concatenate(kept)


METHODS = ("k-means", "SCAN", "TEMI", "Debiased")


def methods(device, seed, temi_params):
    kmeans = (TorchKMeans(n_clusters=N_CLASSES, n_init=10, random_state=seed, device=device)
              if device.type == "cuda" else KMeans(n_clusters=N_CLASSES, n_init=10,
                                                   random_state=seed))
    return {
        "k-means": kmeans,
        "SCAN": SCANClusterer(n_clusters=N_CLASSES, random_state=seed, device=device),
        "TEMI": TEMIClusterer(n_clusters=N_CLASSES, random_state=seed, device=device,
                              **temi_params),
        "Debiased": DebiasedClusterer(n_clusters=N_CLASSES, random_state=seed, device=device),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds of the clusterers (results are averaged)")
    parser.add_argument("--subsample-seed", type=int, default=0,
                        help="seed of the long-tailed subsampling (fixed across runs)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--temi-teacher-temperature", type=float, default=None,
                        help="TEMIClusterer's teacher_temperature (default: its own default)")
    args = parser.parse_args(argv)
    temi_params = ({} if args.temi_teacher_temperature is None
                   else {"teacher_temperature": args.temi_teacher_temperature})
    if args.threads:
        torch.set_num_threads(args.threads)

    from skdeepclust._device import resolve_device

    device = resolve_device(args.device)
    start = time.perf_counter()
    features, labels, source = cifar10_test_features(args.archive, args.model, args.cache_dir,
                                                     device)
    print(f"features {features.shape} from {source} in {time.perf_counter() - start:.0f}s; "
          f"device {device}; seeds {args.seeds}; TEMI {temi_params or 'defaults'}", flush=True)

    datasets = {"balanced": np.arange(labels.size)}
    for ratio in args.ratios:
        datasets[f"long-tail {ratio:g}"] = long_tailed_subset(labels, ratio, args.subsample_seed)

    header = f"{'data':<15} {'n':>6} {'method':<9} {'acc':>13} {'nmi':>13} {'ari':>13} {'s':>6}"
    print(header)
    print("-" * len(header))
    for data_name, rows in datasets.items():
        X, y = features[rows], labels[rows]
        for method_name in args.methods:
            scores, seconds = [], 0.0
            for seed in args.seeds:
                model = methods(device, seed, temi_params)[method_name]
                tic = time.perf_counter()
                predicted = model.fit_predict(X)
                seconds += time.perf_counter() - tic
                scores.append((cluster_accuracy(y, predicted),
                               normalized_mutual_info_score(y, predicted),
                               adjusted_rand_score(y, predicted)))
            mean, spread = np.mean(scores, axis=0), np.std(scores, axis=0)
            cells = [f"{100 * m:5.1f}" + (f" ±{100 * s:4.1f}" if len(args.seeds) > 1 else "")
                     for m, s in zip(mean, spread)]
            print(f"{data_name:<15} {len(rows):>6} {method_name:<9} "
                  + " ".join(f"{c:>13}" for c in cells)
                  + f" {seconds / len(args.seeds):6.1f}", flush=True)
    print(f"total wall time {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
