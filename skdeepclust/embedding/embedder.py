"""Stage 1: images to L2-normalised feature vectors with a frozen timm backbone."""

from __future__ import annotations

import contextlib
import copy
import numbers
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .._device import resolve_device
from .backbone import build_backbone
from .images import as_images

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def _resize_and_center_crop(images, size, interpolation):
    """Resize (N, C, H, W) so that it covers ``size`` keeping its aspect, then crop the centre."""
    target_h, target_w = size
    height, width = images.shape[-2:]
    if (height, width) != (target_h, target_w):
        scale = max(target_h / height, target_w / width)
        resized = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
        antialias = interpolation != "nearest" and scale < 1
        images = F.interpolate(
            images,
            size=resized,
            mode=interpolation,
            antialias=antialias,
            **({} if interpolation == "nearest" else {"align_corners": False}),
        )
        top = (resized[0] - target_h) // 2
        left = (resized[1] - target_w) // 2
        images = images[..., top:top + target_h, left:left + target_w]
    if interpolation == "bicubic":
        images = images.clamp(0.0, 1.0)  # bicubic overshoots at edges
    return images


def prepare_batch(batch, preprocessing, device):
    """Pixels (uint8 or [0, 1] floats, on the host) to the backbone's normalised input on ``device``.

    The copy to ``device`` is of the raw pixels: uint8 is 4x smaller than float32,
    and resizing and normalising run on the device.
    """
    if isinstance(batch, list):  # images of different sizes: resize each, then stack
        return torch.cat([prepare_batch(image[None], preprocessing, device) for image in batch])
    if device.type == "cuda":
        batch = batch.pin_memory()
    pixels = batch.to(device, non_blocking=True)
    pixels = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
    pixels = _resize_and_center_crop(pixels, preprocessing.input_size, preprocessing.interpolation)
    mean = torch.tensor(preprocessing.mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _autocast(device, precision):
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, precision))


def _check_features(features, backbone):
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"The backbone {backbone} returned {shape}, not a (batch, features) matrix. A module "
            "backbone must return pooled features, e.g. end it with global average pooling "
            "and flatten."
        )
    return features


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Turn images into L2-normalised feature vectors with a frozen pretrained backbone.

    Any timm model works; self-supervised ViTs (DINO, DINOv2) separate classes best.
    Images are resized on the device so that they cover ``image_size`` (keeping
    their aspect ratio), centre-cropped, and normalised with the model's own mean
    and std, as read from timm's data config.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="vit_small_patch16_224.dino"
        A timm model name, with an optional pretrained tag, or a module that maps a
        (batch, 3, H, W) tensor to (batch, features). A module is copied, never
        changed; unless it is a timm model, give ``image_size``, ``mean`` and ``std``.
    pretrained : bool or str or path-like, default=True
        ``True``: timm's own weights for the name (from the model hub, or its cache).
        A path: a local checkpoint (``.safetensors``, ``.pth``, ``.pt``, ``.bin``),
        including training checkpoints such as DINO's (``teacher``/``student``,
        ``backbone.`` and ``module.`` prefixes are handled; the teacher is used).
        ``False``: random weights, seeded by ``random_state``.
    image_size : int or (int, int), default=None
        Input size of the backbone. ``None`` uses the model's own; ViTs are built
        for the given size (position embeddings are resampled).
    mean, std : tuple of 3 floats, default=None
        Normalisation, overriding the model's own.
    interpolation : {"bilinear", "bicubic", "nearest"}, default=None
        Resampling for resizing, overriding the model's own.
    batch_size : int, default=64
        Images per forward pass. On a CUDA out-of-memory error the batch is halved
        and retried.
    device : str or torch.device, default="auto"
        ``"auto"`` runs on CUDA when there is a CUDA device, else on the CPU. It is
        read at each ``transform``, so an embedder fitted on a GPU runs on a CPU after
        unpickling.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Compute precision of the backbone. ``"auto"`` is bfloat16 (float16 where
        bfloat16 is unsupported) on CUDA and float32 elsewhere. Features are
        returned as float32 in every case.
    normalize : bool, default=True
        Scale each feature vector to unit L2 norm.
    random_state : int, RandomState instance or None, default=None
        Seeds the random weights when ``pretrained=False``.
    verbose : int, default=0
        Show a progress bar (tqdm) over the images when positive.

    Attributes
    ----------
    model_ : torch.nn.Module
        The backbone, in eval mode, with its weights on the CPU.
    preprocessing_ : Preprocessing
        Input size, mean, std and interpolation in use.
    embedding_dim_ : int
        Length of the feature vectors.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust import ImageEmbedder
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> embedder = ImageEmbedder("test_vit", pretrained=False, random_state=0)
    >>> features = embedder.fit_transform(images)
    >>> features.shape, features.dtype
    ((4, 64), dtype('float32'))
    >>> np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    True
    """

    def __init__(
        self,
        backbone="vit_small_patch16_224.dino",
        pretrained=True,
        image_size=None,
        mean=None,
        std=None,
        interpolation=None,
        batch_size=64,
        device="auto",
        precision="auto",
        normalize=True,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.normalize = normalize
        self.random_state = random_state
        self.verbose = verbose

    def _validate_params(self):
        if not isinstance(self.backbone, (str, torch.nn.Module)):
            raise TypeError(
                "backbone must be a timm model name or a torch.nn.Module; got "
                f"{type(self.backbone).__name__}."
            )
        if not isinstance(self.pretrained, (bool, str, os.PathLike)):
            raise TypeError(
                "pretrained must be True, False or the path of a checkpoint file; got "
                f"{self.pretrained!r}."
            )
        size = self.image_size
        if size is not None and not (
            _is_positive_int(size)
            or (isinstance(size, (tuple, list)) and len(size) == 2 and all(map(_is_positive_int, size)))
        ):
            raise ValueError(f"image_size must be None, a positive int or (height, width); got {size!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (
                np.ndim(value) != 1 or len(value) != 3 or not np.all(np.isfinite(value))
            ):
                raise ValueError(f"{name} must be None or 3 finite numbers (R, G, B); got {value!r}.")
        if self.std is not None and np.any(np.asarray(self.std) <= 0):
            raise ValueError(f"std must be positive; got {self.std!r}.")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be None or one of {INTERPOLATIONS}; got {self.interpolation!r}."
            )
        if not _is_positive_int(self.batch_size):
            raise ValueError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}.")
        resolve_device(self.device)

    def fit(self, X, y=None):
        """Load the backbone and check that ``X`` can be read.

        Nothing is learned from ``X``: the backbone is frozen. ``fit_transform``
        embeds ``X`` once.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            See :class:`ImageEmbedder` for the accepted forms.
        y : None
            Ignored.

        Returns
        -------
        self : ImageEmbedder
            The fitted embedder.
        """
        self._validate_params()
        as_images(X)
        model, preprocessing = build_backbone(
            self.backbone,
            self.pretrained,
            self.image_size,
            self.mean,
            self.std,
            self.interpolation,
            self.random_state,
        )
        backbone_name = self._backbone_name()
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *preprocessing.input_size)
            try:
                features = model(probe)
            except Exception as exc:
                raise ValueError(
                    f"The backbone {backbone_name} fails on a {tuple(probe.shape)} input "
                    f"({type(exc).__name__}: {exc}); check image_size."
                ) from exc
        self.model_ = model
        self.preprocessing_ = preprocessing
        self.embedding_dim_ = int(_check_features(features, backbone_name).shape[1])
        self._device_model = None
        return self

    def _backbone_name(self):
        return self.backbone if isinstance(self.backbone, str) else type(self.backbone).__name__

    def _model_on(self, device):
        if device.type == "cpu":
            return self.model_
        cached = getattr(self, "_device_model", None)
        if cached is None or cached[0] != device:
            cached = (device, copy.deepcopy(self.model_).to(device))
            self._device_model = cached
        return cached[1]

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            See :class:`ImageEmbedder` for the accepted forms.

        Returns
        -------
        features : ndarray of shape (n_images, embedding_dim_), dtype float32
            One feature vector per image, of unit L2 norm when ``normalize=True``.
        """
        check_is_fitted(self)
        images = as_images(X)
        device = resolve_device(self.device)
        model = self._model_on(device)
        features = np.empty((len(images), self.embedding_dim_), dtype=np.float32)
        forward_size = self.batch_size
        done = 0
        progress = tqdm(total=len(images), desc="embedding", unit="img", disable=not self.verbose)
        with torch.inference_mode(), progress:
            for batch in images.batches(self.batch_size):
                inputs = prepare_batch(batch, self.preprocessing_, device)
                position = 0
                while position < inputs.shape[0]:
                    chunk = inputs[position:position + forward_size]
                    try:
                        with _autocast(device, self.precision):
                            output = model(chunk)
                    except torch.cuda.OutOfMemoryError:
                        if forward_size == 1:
                            raise
                        forward_size = max(1, forward_size // 2)
                        torch.cuda.empty_cache()
                        warnings.warn(
                            f"Out of device memory; retrying with batches of {forward_size} images.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        continue
                    output = _check_features(output, self._backbone_name()).float()
                    if self.normalize:
                        output = F.normalize(output, dim=1)
                    features[done:done + output.shape[0]] = output.cpu().numpy()
                    done += output.shape[0]
                    position += output.shape[0]
                    progress.update(output.shape[0])
        return features

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_device_model", None)  # device copies are rebuilt where the pickle is loaded
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags
