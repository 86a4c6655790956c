"""k-means accuracy with the whole short side kept (crop_pct=1.0) or the model's own crop.

Embeds random samples of CIFAR-10 test photos (100 per class, one sample per seed)
with the SimCLR ResNet-18 and the packaged EfficientNet-Lite0, once per crop, and
clusters each embedding with scikit-learn's KMeans (n_init=10, random_state=0).
Accuracy is under the best matching of clusters to classes.

    python benchmarks/crop.py                 # samples 0-4: about 5 minutes on 2 cores
    python benchmarks/crop.py --samples 0 1
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.cluster import KMeans

from _shared_data import BACKBONES, add_data_arguments
from skdeepclust import ImageEmbedder
from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.metrics import cluster_accuracy

CROPS = (1.0, "model")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--samples", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the photo samples")
    args = parser.parse_args(argv)

    test_folder = extract_image_archive(args.archive) / "test"
    accuracy, crop_share = {}, {}
    for sample in args.samples:
        photos = load_image_folder(test_folder, max_per_class=100, random_state=sample)
        for name, settings in BACKBONES.items():
            for crop in CROPS:
                embedder = ImageEmbedder(**settings(args.model), crop_pct=crop, device="cpu")
                features = embedder.fit_transform(photos.filenames)
                crop_share[name, crop] = embedder.preprocessing_.crop_pct  # what "model" stands for
                labels = KMeans(10, n_init=10, random_state=0).fit_predict(features)
                accuracy.setdefault((name, crop), []).append(
                    cluster_accuracy(photos.target, labels))

    print(f"k-means accuracy on {len(args.samples)} samples of 1,000 CIFAR-10 test photos "
          f"(seeds {args.samples})")
    print(f"{'backbone':<20} {'crop_pct':<9} {'mean':>6}  per sample")
    for (name, crop), values in accuracy.items():
        own = "" if crop == 1.0 else f" ({crop_share[name, crop]})"
        print(f"{name:<20} {str(crop) + own:<9} {np.mean(values):6.3f}  "
              + " ".join(f"{value:.3f}" for value in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
