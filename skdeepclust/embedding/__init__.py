"""Stage 1: images to feature vectors with a frozen timm backbone."""

from .backbone import Preprocessing, PretrainedWeightsUnavailable, build_backbone, read_checkpoint
from .embedder import ImageEmbedder
from .images import IMAGE_EXTENSIONS, as_images, find_image_files

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageEmbedder",
    "Preprocessing",
    "PretrainedWeightsUnavailable",
    "as_images",
    "build_backbone",
    "find_image_files",
    "read_checkpoint",
]
