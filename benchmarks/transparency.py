"""k-means accuracy when some photos are cut-outs on a transparent background.

Each CIFAR-10 test photo of a random sample (100 per class, one sample per seed)
is pasted at a random place on a 64 x 64 canvas: every other photo of a class on
a transparent canvas, saved as PNG, the rest on white, saved as JPEG, as a folder
of product photos and cut-outs may hold them. The files are embedded as
skdeepclust decodes them (transparent pixels shown on white) and as
``convert("RGB")`` decodes them (the colour beneath transparent pixels, here
black, as skdeepclust did before), then clustered with scikit-learn's KMeans
(n_init=10, random_state=0). Accuracy is under the best matching of clusters to
classes; "by kind" is how far each cluster holds one kind of file (1.0: each
cluster all PNG or all JPEG, 0.5: half and half), weighted by cluster size.

    python benchmarks/transparency.py               # samples 0-2: about 4 minutes on 2 cores
    python benchmarks/transparency.py --samples 0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans

from _shared_data import BACKBONES, add_data_arguments
from skdeepclust import ImageEmbedder
from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.metrics import cluster_accuracy

CANVAS = 64


def write_cut_outs(photos, folder, seed):
    """The photos pasted on canvases, every other one of a class transparent (PNG),
    the rest white (JPEG); their paths, in the order of ``photos``."""
    rng = np.random.default_rng(seed)
    paths, seen = [], {}
    for position, (path, label) in enumerate(zip(photos.filenames, photos.target)):
        photo = Image.open(path).convert("RGBA")
        corner = tuple(int(value) for value in rng.integers(0, CANVAS - photo.width + 1, 2))
        cut_out = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
        cut_out.paste(photo, corner)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] % 2:
            paths.append(folder / f"{position}.png")
            cut_out.save(paths[-1])
        else:
            paths.append(folder / f"{position}.jpg")
            Image.alpha_composite(Image.new("RGBA", cut_out.size, (255, 255, 255, 255)), cut_out).convert(
                "RGB").save(paths[-1], quality=95)
    return [str(path) for path in paths]


def purity_by_kind(labels, is_png):
    return sum(max(is_png[labels == cluster].sum(), (~is_png[labels == cluster]).sum())
               for cluster in np.unique(labels)) / len(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--samples", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the photo samples and of the canvas places")
    args = parser.parse_args(argv)

    test_folder = extract_image_archive(args.archive) / "test"
    results = {}
    for sample in args.samples:
        photos = load_image_folder(test_folder, max_per_class=100, random_state=sample)
        with tempfile.TemporaryDirectory() as folder:
            files = write_cut_outs(photos, Path(folder), sample)
            is_png = np.array([path.endswith(".png") for path in files])
            inputs = {
                "on white (now)": files,
                "alpha dropped (before)": [np.asarray(Image.open(path).convert("RGB")) for path in files],
            }
            for name, settings in BACKBONES.items():
                for decoding, images in inputs.items():
                    features = ImageEmbedder(**settings(args.model), device="cpu").fit_transform(images)
                    labels = KMeans(10, n_init=10, random_state=0).fit_predict(features)
                    results.setdefault((name, decoding), []).append(
                        (cluster_accuracy(photos.target, labels), purity_by_kind(labels, is_png)))

    print(f"k-means on {len(args.samples)} samples of 1,000 CIFAR-10 test photos, half of each class "
          f"cut out on transparent PNGs (seeds {args.samples})")
    print(f"{'backbone':<20} {'transparent pixels':<24} {'accuracy':>8} {'by kind':>8}  accuracy per sample")
    for (name, decoding), rows in results.items():
        accuracy, purity = np.array(rows).T
        print(f"{name:<20} {decoding:<24} {accuracy.mean():8.3f} {purity.mean():8.2f}  "
              + " ".join(f"{value:.3f}" for value in accuracy))


if __name__ == "__main__":
    main()
