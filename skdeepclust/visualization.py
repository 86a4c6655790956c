"""Pictures of clusters: a montage with one row of thumbnails per cluster."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ._device import checked_random_state, host_array
from ._grouping import rows_of_each
from ._validation import check_no_missing_labels, labels_from_list, unique_labels
from .embedding.images import as_images

_BACKGROUND = (255, 255, 255)
_LABEL_WIDTH = 110
_GAP = 4


class _MontageTooLarge(ValueError):
    """A montage that PIL would refuse to open: over twice ``Image.MAX_IMAGE_PIXELS``
    (PIL warns above the limit itself and refuses above twice it)."""


def _thumbnail(pixels, size):
    """A (3, H, W) tensor of pixels as a size x size PIL thumbnail, aspect kept, centred."""
    pixels = pixels.cpu() if pixels.dtype == torch.uint8 else pixels.cpu().float()
    array = np.moveaxis(pixels.numpy(), 0, -1)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    # Scale to fit the tile both ways: small images (CIFAR's 32 px) are enlarged to be seen.
    scale = size / max(image.size)
    image = image.resize(
        (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
        Image.Resampling.LANCZOS,
    )
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    tile.paste(image, ((size - image.size[0]) // 2, (size - image.size[1]) // 2))
    return tile


def _pick_examples(labels, scores, n_per_cluster, rng):
    """Per cluster, the most confident members when scores are given, else a random
    draw; and the size of each cluster."""
    chosen, sizes = {}, {}
    clusters = unique_labels(labels, "labels")
    for cluster, members in zip(clusters, rows_of_each(labels, clusters)):
        sizes[cluster] = members.size
        if scores is not None:
            members = members[np.argsort(-scores[members], kind="stable")]
        else:
            members = rng.permutation(members)
        chosen[cluster] = np.sort(members[:n_per_cluster]) if scores is None else members[:n_per_cluster]
    return chosen, sizes


# Images decoded at once for the montage: each becomes a thumbnail before the next
# batch, so that only these few are ever held at full size (a 12-megapixel photo
# takes 36 MB, and a montage of 50 clusters shows 400).
_DECODED_AT_ONCE = 8


def _thumbnails_of(source, positions, size):
    """Thumbnails of only the images at ``positions``, keyed by position.

    Large JPEG files decode at a reduced scale that still covers ``size``.
    """
    positions = sorted(set(int(p) for p in positions))
    batches = source.subset(positions).batches(_DECODED_AT_ONCE, min_size=(size, size))
    thumbnails = [_thumbnail(image, size) for batch in batches for image in batch]
    return dict(zip(positions, thumbnails))


def cluster_montage(images, labels, *, n_per_cluster=8, thumbnail_size=48, scores=None, random_state=0):
    """One row of thumbnails per cluster, so that a person can see what each cluster holds.

    Parameters
    ----------
    images : array-like of images, list of images or paths, or folder path
        Any input that :class:`~skdeepclust.ImageEmbedder` accepts, in the order of
        ``labels``. Only the images shown are decoded.
    labels : array-like of shape (n_images,)
        Cluster of each image; -1 (noise) gets a row of its own.
    n_per_cluster : int, default=8
        Thumbnails per row.
    thumbnail_size : int, default=48
        Side of each square thumbnail, in pixels, at least 8. A montage larger than
        PIL opens (twice ``PIL.Image.MAX_IMAGE_PIXELS``) is refused.
    scores : array-like of shape (n_images,), default=None
        Confidence of each assignment; when given, each row shows the most
        confident members, else a random draw seeded by ``random_state``.
    random_state : int, RandomState instance or None, default=0
        Seeds the random draw.

    Returns
    -------
    montage : PIL.Image.Image
        An RGB image; ``montage.save("montage.png")`` writes it.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.visualization import cluster_montage
    >>> images = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    >>> montage = cluster_montage(images, [0, 0, 1, 1, 1, 2], n_per_cluster=2, thumbnail_size=32)
    >>> montage.size
    (182, 112)
    """
    labels = np.asarray(host_array(labels_from_list(labels), "labels"))
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}.")
    check_no_missing_labels(labels, "labels", "leave those images out, or give them a cluster such as -1")
    if scores is not None:
        try:
            scores = np.asarray(host_array(scores, "scores"), dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scores must be numbers, one per image ({exc}).") from exc
        if scores.shape != labels.shape:
            raise ValueError(f"scores has shape {scores.shape} but labels has {labels.shape}.")
    for name, value, minimum in (("n_per_cluster", n_per_cluster, 1), ("thumbnail_size", thumbnail_size, 8)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    # Python ints: sizes computed in a numpy integer type (np.uint8(48)) would wrap.
    n_per_cluster, thumbnail_size = int(n_per_cluster), int(thumbnail_size)
    source = as_images(images)
    if len(source) != labels.size:
        raise ValueError(f"Got {len(source)} images but {labels.size} labels; they must pair up.")
    rng = checked_random_state(random_state)
    chosen, sizes = _pick_examples(labels, scores, n_per_cluster, rng)
    row_height = thumbnail_size + _GAP
    longest_row = max(len(members) for members in chosen.values())
    font = ImageFont.load_default()
    captions = {cluster: ("noise" if cluster == -1 else f"cluster {cluster}",
                          f"{sizes[cluster]} image" + ("" if sizes[cluster] == 1 else "s"))
                for cluster in chosen}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(measure.textlength(text, font=font) for caption in captions.values() for text in caption)
    label_width = max(_LABEL_WIDTH, int(np.ceil(widest)) + 12)  # long string labels widen the column
    width = label_width + longest_row * (thumbnail_size + _GAP)
    height = len(chosen) * row_height + _GAP
    # Checked before decoding: a mistyped thumbnail_size would otherwise ask for
    # gigabytes only after every chosen image had been read.
    if Image.MAX_IMAGE_PIXELS is not None and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise _MontageTooLarge(
            f"The montage would be {width} x {height} pixels, more than PIL opens (twice "
            f"PIL.Image.MAX_IMAGE_PIXELS, {2 * Image.MAX_IMAGE_PIXELS:,}): lower thumbnail_size "
            "or n_per_cluster, or show fewer clusters."
        )
    thumbnails = _thumbnails_of(source, np.concatenate(list(chosen.values())), thumbnail_size)

    montage = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(montage)
    for row, (cluster, members) in enumerate(chosen.items()):
        top = _GAP + row * row_height
        name, size = captions[cluster]
        draw.text((4, top + 2), name, fill=(0, 0, 0), font=font)
        draw.text((4, top + 16), size, fill=(90, 90, 90), font=font)
        for column, position in enumerate(members):
            left = label_width + column * (thumbnail_size + _GAP)
            montage.paste(thumbnails[int(position)], (left, top))
    return montage
