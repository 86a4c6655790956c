"""Peak memory of the package's large-data paths, next to the size of their data (Linux).

Before each call the process's peak resident size (VmHWM) is reset to its current
size (by writing 5 to /proc/self/clear_refs); the rise of the peak during the call
is printed beside the size of the data the call holds:

* stream: ``ImageEmbedder.transform(files)`` on N and then 4N CIFAR-10 JPEG files
          (ResNet-18 at 32 px, random weights). Files are decoded a batch at a
          time, so the rise should be the output plus the same constant for both;
* kmeans: ``TorchKMeans`` on an n x d float32 matrix in memory and as a read-only
          memory map, and scikit-learn's ``KMeans`` on the same matrix; the rise as
          a multiple of the matrix;
* knn:    ``mine_nearest_neighbors`` on n x d; the rise is bounded by the chunk
          budget of 256 MiB of similarities, whatever n;
* predict: ``predict`` of a SCAN head, of ``FeatureClusterer`` by nearest centre
          (agglomerative) and of ``TorchKMeans``, each fitted with k clusters on a
          sample, on an n x d float32 matrix, and ``label_free_score`` of it; the
          rise as a multiple of the matrix, which n x k distances or probabilities
          held at once would exceed by far;
* strip:  ``ImageEmbedder.transform`` of one image of 1 x 2000 pixels at 224 px
          (ResNet-18, random weights), which the resize would enlarge to
          224 x 448000 before cropping all but its centre; the rise in MiB against
          the 0.6 MiB of the 224 x 224 float32 input that the backbone sees.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --steps knn --knn-samples 200000
    python benchmarks/bench_memory.py --steps predict --predict-samples 100000 --predict-clusters 1000

All on the CPU: a GPU's memory is another matter (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.exceptions import ConvergenceWarning

from bench_cluster import clustered_features
from skdeepclust import FeatureClusterer, ImageEmbedder
from skdeepclust.clustering import SCANClusterer, TorchKMeans, label_free_score, mine_nearest_neighbors
from skdeepclust.datasets import extract_image_archive
from skdeepclust.embedding.image_files import find_image_files

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
MIB = 2 ** 20


def _status_mib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rise(function):
    """(MiB by which the peak resident size rose during ``function()``, seconds, its result)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    return _status_mib("VmHWM") - before, seconds, result


def report(what, data_mib, rise, seconds):
    print(f"{what:46} {data_mib:9.0f} {rise:9.0f} {rise / data_mib:8.2f} {seconds:8.1f}", flush=True)


def stream(args):
    folder = extract_image_archive(args.archive, args.cache_dir)
    files = find_image_files(folder)
    embedder = ImageEmbedder(backbone="resnet18", pretrained=False, image_size=32, device="cpu",
                             random_state=0).fit(files[:8])
    embedder.transform(files[:64])  # the runtime and its first batches, outside the measurements
    for n in (args.n_files, 4 * args.n_files):
        rise, seconds, features = peak_rise(lambda: embedder.transform(files[:n]))
        report(f"stream: ImageEmbedder.transform, {n} files", features.nbytes / MIB, rise, seconds)


def kmeans(args):
    X = clustered_features(args.kmeans_samples, args.features, args.n_clusters)
    size = X.nbytes / MIB
    params = dict(n_clusters=args.n_clusters, n_init=1, max_iter=args.max_iter, random_state=0)
    with tempfile.TemporaryDirectory() as scratch:
        np.save(os.path.join(scratch, "X.npy"), X)
        mapped = np.load(os.path.join(scratch, "X.npy"), mmap_mode="r")
        mapped.sum()  # its pages are read in now, not counted as the fit's
        cases = [
            ("kmeans: TorchKMeans, in memory", lambda: TorchKMeans(**params, device="cpu").fit(X)),
            ("kmeans: TorchKMeans, read-only memory map",
             lambda: TorchKMeans(**params, device="cpu").fit(mapped)),
            ("kmeans: scikit-learn KMeans, in memory", lambda: KMeans(**params).fit(X)),
        ]
        for what, fit in cases:
            rise, seconds, _ = peak_rise(fit)
            report(what, size, rise, seconds)


def knn(args):
    X = clustered_features(args.knn_samples, args.knn_features, 100)
    rise, seconds, _ = peak_rise(lambda: mine_nearest_neighbors(X, 10, device="cpu"))
    report(f"knn: mine_nearest_neighbors, n={args.knn_samples}", X.nbytes / MIB, rise, seconds)


def predict(args):
    X = clustered_features(args.predict_samples, args.features, args.predict_clusters)
    sample = X[:2 * args.predict_clusters]
    k = args.predict_clusters
    models = [
        ("SCANClusterer", SCANClusterer(n_clusters=k, n_epochs=1, random_state=0, device="cpu")),
        ("FeatureClusterer, agglomerative",
         FeatureClusterer(AgglomerativeClustering(), n_clusters=k)),
        ("TorchKMeans", TorchKMeans(n_clusters=k, n_init=1, random_state=0, device="cpu")),
    ]
    for name, model in models:
        with warnings.catch_warnings():  # one epoch leaves some of SCAN's clusters empty
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(sample)
        rise, seconds, _ = peak_rise(lambda: model.predict(X))
        report(f"predict: {name}", X.nbytes / MIB, rise, seconds)
    labels = models[-1][1].predict(X)
    rise, seconds, _ = peak_rise(lambda: label_free_score(X, labels, random_state=0))
    report("predict: label_free_score", X.nbytes / MIB, rise, seconds)


def strip(args):
    embedder = ImageEmbedder(backbone="resnet18", pretrained=False, image_size=224, device="cpu",
                             random_state=0).fit(np.zeros((1, 8, 8, 3), np.uint8))
    embedder.transform(np.zeros((1, 224, 224, 3), np.uint8))  # the runtime, outside the measurement
    image = np.random.default_rng(0).integers(0, 256, (1, 1, 2000, 3), dtype=np.uint8)
    rise, seconds, _ = peak_rise(lambda: embedder.transform(image))
    report("strip: ImageEmbedder.transform, 1x2000 px", 3 * 224 * 224 * 4 / MIB, rise, seconds)


STEPS = {"stream": stream, "kmeans": kmeans, "knn": knn, "predict": predict, "strip": strip}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", choices=sorted(STEPS), default=list(STEPS))
    parser.add_argument("--archive", default=str(ARCHIVE), help="CIFAR-10 JPEG archive (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="where to unpack it (default: skdeepclust's cache)")
    parser.add_argument("--n-files", type=int, default=2500, help="N: the stream step embeds N, then 4N files")
    parser.add_argument("--kmeans-samples", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--n-clusters", type=int, default=100)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--knn-samples", type=int, default=50_000)
    parser.add_argument("--knn-features", type=int, default=384)
    parser.add_argument("--predict-samples", type=int, default=100_000)
    parser.add_argument("--predict-clusters", type=int, default=1000)
    args = parser.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        parser.error("the peak is read from Linux's /proc/self; run this on Linux")
    print(f"CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          "rise: growth of the peak resident size during the call")
    print(f"{'call':46} {'data MiB':>9} {'rise MiB':>9} {'rise/data':>8} {'seconds':>8}")
    for name in args.steps:
        STEPS[name](args)


if __name__ == "__main__":
    main()
