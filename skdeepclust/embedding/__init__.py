"""Stage 1: images to feature vectors with a frozen timm backbone."""

from .backbone import Preprocessing, PretrainedWeightsUnavailable, read_checkpoint
from .embedder import ImageEmbedder
from .images import IMAGE_EXTENSIONS, find_image_files

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageEmbedder",
    "Preprocessing",
    "PretrainedWeightsUnavailable",
    "find_image_files",
    "read_checkpoint",
]
