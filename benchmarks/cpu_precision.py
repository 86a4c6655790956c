"""float32 against bfloat16 on the CPU: speed, how far the features move, and k-means accuracy.

``precision="auto"`` is float32 on the CPU. On CPUs that compute in bfloat16
natively (AVX-512 BF16 or AMX, listed by ``lscpu``) ``precision="bfloat16"`` can be
faster; elsewhere it is emulated and slower. This script measures both ways in the
same run, interleaved (best of ``--repeats`` rounds), from host uint8 arrays:

- random-weight ResNet-18 and ViT-S/16 at 224 (speed and feature agreement only);
- the SimCLR ResNet-18 at 96 and the packaged EfficientNet-Lite0 at 128 on
  CIFAR-10 test photos (``--per-class`` of each class), also k-means accuracy
  (scikit-learn's KMeans, n_init=10, mean over seeds 0-4).

    python benchmarks/cpu_precision.py                # about 3 minutes on 2 cores
    python benchmarks/cpu_precision.py --per-class 50 --skip-random
    python benchmarks/cpu_precision.py --float16 --per-class 10   # float16 too
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from PIL import Image
from sklearn.cluster import KMeans

from _shared_data import add_data_arguments
from skdeepclust import ImageEmbedder
from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.embedding.presets import SIMCLR_RESNET18_CIFAR10
from skdeepclust.metrics import cluster_accuracy

PRECISIONS = ("float32", "bfloat16")
KMEANS_SEEDS = range(5)


def bfloat16_flags():
    """The CPU's bfloat16 instruction sets, as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(flag for flag in flags if "bf16" in flag)


def compare(settings, images, repeats, precisions=PRECISIONS):
    """Best images/s of each precision, interleaved, and the features of each."""
    embedders = {precision: ImageEmbedder(**settings, precision=precision, device="cpu").fit(images[:2])
                 for precision in precisions}
    best, features = dict.fromkeys(precisions, np.inf), {}
    for _ in range(repeats):
        for precision, embedder in embedders.items():
            start = time.perf_counter()
            features[precision] = embedder.transform(images)
            best[precision] = min(best[precision], time.perf_counter() - start)
    rates = {precision: len(images) / seconds for precision, seconds in best.items()}
    return rates, features


def mean_kmeans_accuracy(features, labels, n_clusters):
    return float(np.mean([
        cluster_accuracy(labels, KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(features))
        for seed in KMEANS_SEEDS]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--per-class", type=int, default=200, help="CIFAR-10 test photos per class")
    parser.add_argument("--n-random-images", type=int, default=96, help="images for the random-weight rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-random", action="store_true", help="only the real backbones")
    parser.add_argument("--float16", action="store_true",
                        help="also time float16 in the random-weight rows (emulated on most CPUs)")
    args = parser.parse_args(argv)

    print(f"CPU, {torch.get_num_threads()} threads; bfloat16 instructions: "
          f"{', '.join(bfloat16_flags()) or 'none listed'}; torch {torch.__version__}; "
          f"best of {args.repeats} interleaved rounds, host uint8 arrays")
    print(f"{'backbone':<46} {'fp32 img/s':>10} {'bf16 img/s':>10} {'bf16/fp32':>9} "
          f"{'cos min':>8} {'cos mean':>8} {'acc fp32':>8} {'acc bf16':>8}")

    def report(name, settings, images, labels=None):
        timed = PRECISIONS + ("float16",) if args.float16 and labels is None else PRECISIONS
        rates, features = compare(settings, images, args.repeats, timed)
        cosine = np.sum(features["float32"] * features["bfloat16"], axis=1)
        accuracy = ["", ""]
        if labels is not None:
            accuracy = [f"{mean_kmeans_accuracy(features[p], labels, 10):.3f}" for p in PRECISIONS]
        print(f"{name:<46} {rates['float32']:>10.1f} {rates['bfloat16']:>10.1f} "
              f"{rates['bfloat16'] / rates['float32']:>9.2f} {cosine.min():>8.4f} {cosine.mean():>8.5f} "
              f"{accuracy[0]:>8} {accuracy[1]:>8}", flush=True)
        if "float16" in rates:
            print(f"{'  float16':<46} {rates['float16']:>10.1f} img/s, "
                  f"{rates['float16'] / rates['float32']:.2f} x float32", flush=True)

    if not args.skip_random:
        pixels = np.random.default_rng(0).integers(0, 256, (args.n_random_images, 224, 224, 3), dtype=np.uint8)
        for backbone in ("resnet18", "vit_small_patch16_224"):
            report(f"{backbone} (random), 224", dict(backbone=backbone, pretrained=False, random_state=0),
                   pixels)

    photos = load_image_folder(extract_image_archive(args.archive) / "test", max_per_class=args.per_class,
                               random_state=0)
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in photos.filenames])
    real = {"SimCLR ResNet-18, 96": dict(SIMCLR_RESNET18_CIFAR10, pretrained=args.model),
            "EfficientNet-Lite0 (packaged), 128": dict(backbone="efficientnet_lite0.offline", image_size=128)}
    for name, settings in real.items():
        report(f"{name} ({len(pixels)} photos)", settings, pixels, photos.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
