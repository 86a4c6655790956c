import copy
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKDEEPCLUST_SHARED", REPO_ROOT.parent / "shared"))
CIFAR10_ARCHIVE = SHARED / "data" / "cifar10" / "cifar10-jpg.tar.gz"
SIMCLR_RESNET18 = SHARED / "models" / "resnet18-simclr-cifar10.safetensors"

# The tiny timm test ViT at a small input size keeps a forward pass at milliseconds.
TINY = dict(backbone="test_vit", pretrained=False, image_size=32, random_state=0)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails at once, as on an offline machine.

    Unix-domain sockets stay open: they are how worker processes hand tensors back.
    """

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in the test suite")

    connect = socket.socket.connect

    def connect_locally_only(sock, address):
        if sock.family == getattr(socket, "AF_UNIX", None):
            return connect(sock, address)
        return refuse()

    # With a proxy set, the package leaves it to the proxy whether the hub can be reached.
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket.socket, "connect", connect_locally_only)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def two_tone_images(n_per_group=8, size=32, seed=0):
    """Dark and bright noise images: two groups any backbone separates."""
    rng = np.random.default_rng(seed)
    dark = rng.integers(0, 60, (n_per_group, size, size, 3), dtype=np.uint8)
    bright = rng.integers(190, 256, (n_per_group, size, size, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], n_per_group)
    return np.concatenate([dark, bright]), labels


@pytest.fixture
def images():
    return two_tone_images()[0]


@pytest.fixture
def labelled_images():
    return two_tone_images()


@pytest.fixture
def image_folder(tmp_path):
    """``root/<class>/<file>`` with 4 dark PNGs and 4 bright JPEGs of different sizes."""
    X, y = two_tone_images(n_per_group=4)
    for position, (image, label) in enumerate(zip(X, y)):
        folder = tmp_path / ("dark" if label == 0 else "bright")
        folder.mkdir(exist_ok=True)
        size = 24 + 4 * position
        picture = Image.fromarray(image).resize((size, size + 3))
        picture.save(folder / f"{position}.{'png' if label == 0 else 'jpg'}")
    return tmp_path


def interrupt_embedding_at(patcher, call):
    """Make ``ImageEmbedder._forward`` raise KeyboardInterrupt, as Ctrl-C would, at its
    ``call``-th call; ``patcher`` is ``monkeypatch`` or one of its contexts."""
    from skdeepclust import ImageEmbedder

    forward, calls = ImageEmbedder._forward, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return forward(self, *args)

    patcher.setattr(ImageEmbedder, "_forward", interrupted)


STAND_IN_HEIF = "STAND-IN HEIF"


@pytest.fixture
def register_stand_in_heif(monkeypatch):
    """A function that registers, for this test only, a PNG opener as Pillow's HEIF
    plugin (pillow-heif, which the tests do not install) for ``.heic`` and ``.hif``."""
    from PIL import PngImagePlugin

    for registry in ("OPEN", "EXTENSION", "ID"):
        monkeypatch.setattr(Image, registry, copy.copy(getattr(Image, registry)))

    def register():
        Image.register_open(STAND_IN_HEIF, PngImagePlugin.PngImageFile, PngImagePlugin._accept)
        Image.register_extensions(STAND_IN_HEIF, [".heic", ".hif"])

    return register


@pytest.fixture(scope="session")
def cifar10_test_folder(tmp_path_factory):
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (../shared is absent)")
    from skdeepclust.datasets import extract_image_archive

    return extract_image_archive(CIFAR10_ARCHIVE, tmp_path_factory.mktemp("cache")) / "test"


def peak_numpy_bytes(function, *args, **kwargs):
    """The most memory ``function(*args, **kwargs)`` held at once in numpy arrays and
    Python objects (numpy reports its buffers to tracemalloc), and its result."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result
